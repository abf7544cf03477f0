#include "allocator.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "fork.h"
#include "runtime_access.h"

namespace mps_sim {
namespace {

// Note [Reuse by stream]
// takeReusable(stream) may return a block whose last use was on `stream` itself and has not
// completed yet: safe for that stream only. Such blocks go to that stream's own free list;
// blocks every user has finished with (takeReusable(nullptr)) go to the shared list. A block
// never moves from a stream's list to another stream.
//
// Note [Emptying the cache]
// emptyCache returns to the host every cached block no stream can still touch: those of the
// shared list and of every stream's list whose recorded uses have all completed on the GPU
// (a block on a stream's list may still be read by that stream's open or running batch, and
// a block freed in the unsafe mode may still be used by any stream). The uses recorded at
// release are kept with the block until it is handed out again or returned to the host.
// Blocks still pending, or still in use, stay cached; with nothing in flight the cache ends
// empty.
constexpr size_t kAlignment = 64;
constexpr int kSharedList = -1;

size_t bucketSize(size_t bytes) {
  if (bytes <= 512) {
    return 512;
  }
  // Round up to a quarter of the next power of two: bounded waste, few distinct sizes.
  size_t power = 1;
  while (power < bytes) {
    power <<= 1;
  }
  const size_t quarter = power / 4;
  return (bytes + quarter - 1) / quarter * quarter;
}

class SimAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes == 0) {
      return c10::DataPtr(nullptr, device());
    }
    const size_t size = bucketSize(bytes);
    void* block = takeCached(size, bytes);
    if (block == nullptr) {
      block = std::aligned_alloc(kAlignment, size);
      TORCH_CHECK(block != nullptr, "mps_sim: out of host memory allocating ", size, " bytes");
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.hostAllocations++;
      sizes_[block] = size;
      requested_[block] = bytes;
      stats_.allocatedBytes += size;
    }
    return c10::DataPtr(block, block, &freeBlock, device());
  }

  bool spansBlock(const c10::Storage& storage) {
    const c10::DataPtr& data = storage.data_ptr();
    if (data.get() == nullptr || data.get_deleter() != &freeBlock ||
        data.get_context() != data.get()) {
      return false;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    auto requested = requested_.find(data.get());
    return requested != requested_.end() && requested->second == storage.nbytes();
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &freeBlock;
  }

  // Storage-level copies (serialization, storage clone) read device memory from the host:
  // wait for every stream first so no kernel is still writing it.
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    runtime().synchronizeDevice();
    std::memcpy(dest, src, count);
  }

  static void freeBlock(void* block) {
    if (inBadFork()) {
      return; // the parent's block, in a child that must not touch the device (fork.cpp)
    }
    instance().release(block);
  }

  static SimAllocator& instance() {
    static auto* allocator = new SimAllocator(); // leaked with the runtime
    return *allocator;
  }

  AllocatorStats stats() {
    checkNotInBadFork(); // before mutex_, which the fork may have left held
    std::lock_guard<std::mutex> lock(mutex_);
    AllocatorStats out = stats_;
    out.pendingFrees = runtime().pendingFrees().size();
    return out;
  }

  // Note [Pending frees are settled when looked at]
  // A freed block waits in PendingFrees until every use of it has completed; it was moved to a
  // free list only when an allocation looked for a block of its size. So after a synchronize,
  // with nothing running, blocks whose uses had all completed still counted as pending_frees.
  // A device synchronize and the stats a user reads (bindings.cpp) move them to the shared list
  // first: pending_frees then counts exactly the blocks some stream may still use. (Not the
  // memory-pressure probe's read, which runs for every op.)
  void settleCompletedFrees() {
    checkNotInBadFork();
    collect(nullptr, kSharedList);
  }

  // Note [Emptying the cache]
  void emptyCache() {
    checkNotInBadFork();
    collect(nullptr, kSharedList);
    std::vector<void*> toHost;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [listId, buckets] : free_) {
        for (auto& [size, blocks] : buckets) {
          auto keep = std::stable_partition(blocks.begin(), blocks.end(),
                                            [&](void* block) { return !usesPassed(block); });
          for (auto it = keep; it != blocks.end(); ++it) {
            sizes_.erase(*it);
            requested_.erase(*it);
            lastUses_.erase(*it);
            stats_.cachedBytes -= size;
            stats_.hostFrees++;
            toHost.push_back(*it);
          }
          blocks.erase(keep, blocks.end());
        }
      }
    }
    for (void* block : toHost) {
      std::free(block);
    }
  }

 private:
  void release(void* block) {
    ts::Runtime& rt = runtime();
    std::vector<ts::StreamUse> uses = rt.bufferUses().release(block);
    const bool deferred = rt.protections().deferredFrees;
    {
      // The bookkeeping comes first: once the block is in the pending frees, another thread's
      // collect() may hand it out or empty_cache() may give it back to the host (erasing its
      // size) at any moment.
      std::lock_guard<std::mutex> lock(mutex_);
      const size_t size = sizes_.at(block);
      stats_.allocatedBytes -= size;
      stats_.cachedBytes += size;
      lastUses_[block] = uses; // Note [Emptying the cache]
      if (!deferred) {
        // The deliberately unsafe mode: reusable at once, whoever still reads it.
        free_[kSharedList][size].push_back(block);
        return;
      }
    }
    // The freeing stream may reuse the block at once: its own queue orders the uses.
    rt.pendingFrees().add(block, std::move(uses), rt.currentStreamIfAny());
  }

  // Whether every use recorded for the cached `block` has completed (mutex_ held).
  bool usesPassed(void* block) const {
    auto uses = lastUses_.find(block);
    return uses == lastUses_.end() ||
           std::all_of(uses->second.begin(), uses->second.end(), [](const ts::StreamUse& use) {
             return ts::PendingFrees::passed(use, nullptr);
           });
  }

  // Moves the pending frees `requester` may reuse now into the free list `listId`.
  void collect(const ts::Stream* requester, int listId) {
    std::vector<void*> reusable = runtime().pendingFrees().takeReusable(requester);
    if (reusable.empty()) {
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (void* block : reusable) {
      free_[listId][sizes_.at(block)].push_back(block);
    }
  }

  void* takeFrom(int listId, size_t size, size_t requested) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto list = free_.find(listId);
    if (list == free_.end()) {
      return nullptr;
    }
    auto bucket = list->second.find(size);
    if (bucket == list->second.end() || bucket->second.empty()) {
      return nullptr;
    }
    void* block = bucket->second.back();
    bucket->second.pop_back();
    lastUses_.erase(block);
    requested_[block] = requested;
    stats_.reuses++;
    stats_.cachedBytes -= size;
    stats_.allocatedBytes += size;
    return block;
  }

  void* takeCached(size_t size, size_t requested) {
    ts::Stream& stream = runtime().currentStream();
    if (void* block = takeFrom(stream.id(), size, requested)) {
      return block;
    }
    if (void* block = takeFrom(kSharedList, size, requested)) {
      return block;
    }
    collect(nullptr, kSharedList);
    if (void* block = takeFrom(kSharedList, size, requested)) {
      return block;
    }
    collect(&stream, stream.id());
    return takeFrom(stream.id(), size, requested);
  }

  std::mutex mutex_; // a leaf (Note [Buffer-use lock order]): nothing runtime-side runs under it
  std::unordered_map<void*, size_t> sizes_; // every block from the host, by address
  // Bytes the allocation that handed each block out asked for (storageSpansItsBlock).
  std::unordered_map<void*, size_t> requested_;
  std::unordered_map<int, std::map<size_t, std::vector<void*>>> free_; // list id -> size -> blocks
  // Uses recorded at release of every cached block (Note [Emptying the cache]).
  std::unordered_map<void*, std::vector<ts::StreamUse>> lastUses_;
  AllocatorStats stats_;
};

} // namespace

c10::Allocator* allocator() {
  return &SimAllocator::instance();
}

bool storageSpansItsBlock(const c10::Storage& storage) {
  return SimAllocator::instance().spansBlock(storage);
}

void settleCompletedFrees() {
  SimAllocator::instance().settleCompletedFrees();
}

void synchronizeDeviceAndSettleFrees() {
  try {
    runtime().synchronizeDevice();
  } catch (...) {
    settleCompletedFrees();
    throw;
  }
  settleCompletedFrees();
}

AllocatorStats allocatorStats() {
  return SimAllocator::instance().stats();
}

void emptyCache() {
  SimAllocator::instance().emptyCache();
}

REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &SimAllocator::instance());

} // namespace mps_sim
