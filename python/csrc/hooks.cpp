// The mps_sim PrivateUse1 hooks (at::PrivateUse1HooksInterface): what torch asks of a device
// outside the dispatcher. The autograd engine asks hasPrimaryContext before it runs a backward
// on the device's worker thread; `.to("cpu", non_blocking=True)` and `pin_memory()` ask for the
// pinned host allocator; `UntypedStorage.resize_` asks resizePrivateUse1Bytes.

#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>

#include "allocator.h"
#include "runtime_access.h"
#include "tensor_uses.h"

namespace mps_sim {
namespace {

// Note [Pinned host memory]
// On a Mac, MPS "pins" host memory by allocating it shared with the GPU; here every host byte is
// reachable from the sim GPU, so pinning is a promise only: page-aligned host blocks that
// is_pinned() recognizes, including through views (any address inside a block counts, as
// cudaPointerGetAttributes does). The blocks are tracked by start address.
class PinnedHostAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    void* block = c10::alloc_cpu(bytes == 0 ? 1 : bytes);
    {
      std::lock_guard<std::mutex> lock(mutex());
      blocks()[reinterpret_cast<uintptr_t>(block)] = bytes == 0 ? 1 : bytes;
    }
    return c10::DataPtr(block, block, &release, c10::Device(c10::DeviceType::CPU));
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  static bool contains(const void* ptr) {
    const auto address = reinterpret_cast<uintptr_t>(ptr);
    std::lock_guard<std::mutex> lock(mutex());
    auto it = blocks().upper_bound(address);
    if (it == blocks().begin()) {
      return false;
    }
    --it;
    return address < it->first + it->second;
  }

 private:
  static void release(void* block) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      blocks().erase(reinterpret_cast<uintptr_t>(block));
    }
    c10::free_cpu(block);
  }
  // Leaked: pinned tensors may be freed during interpreter exit.
  static std::mutex& mutex() {
    static auto* m = new std::mutex();
    return *m;
  }
  static std::map<uintptr_t, size_t>& blocks() {
    static auto* b = new std::map<uintptr_t, size_t>();
    return *b;
  }
};

PinnedHostAllocator& pinnedAllocator() {
  static auto* instance = new PinnedHostAllocator();
  return *instance;
}

struct SimHooks final : public at::PrivateUse1HooksInterface {
  bool hasPrimaryContext(c10::DeviceIndex index) const override {
    return index == 0; // the sim device is ready from the first use on
  }
  bool isPinnedPtr(const void* data) const override {
    return data != nullptr && PinnedHostAllocator::contains(data);
  }
  c10::Allocator* getPinnedMemoryAllocator() const override {
    return &pinnedAllocator();
  }
  at::Device getDeviceFromPtr(void*) const override {
    return device();
  }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newBytes) const override {
    resizeSimStorage(storage, newBytes);
  }
};

// Registered when the extension loads, before any Python code can ask torch for the hooks.
const bool registered = [] {
  if (!at::isPrivateUse1HooksRegistered()) {
    static SimHooks hooks;
    at::RegisterPrivateUse1HooksInterface(&hooks);
  }
  return true;
}();

} // namespace
} // namespace mps_sim
