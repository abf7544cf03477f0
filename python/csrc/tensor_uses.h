#pragma once

#include <unordered_map>

// Helpers shared by the op files: which tensors live on mps_sim, their buffers (for the
// runtime's use tracking) and host aliases of their memory (for the kernels to compute on).

#include <ATen/core/Tensor.h>

#include <vector>

#include "allocator.h"
#include "encode.h"

namespace mps_sim {

inline bool isSim(const at::Tensor& t) {
  return t.defined() && t.device().type() == c10::DeviceType::PrivateUse1;
}

// The buffer a tensor lives in: the allocator's block, whatever the view's offset.
inline const void* bufferOf(const at::Tensor& t) {
  return t.storage().data_ptr().get();
}

inline void addUse(std::vector<ts::BufferUse>& uses, const at::Tensor& t, ts::BufferUse::Access access) {
  if (isSim(t) && bufferOf(t) != nullptr) {
    uses.push_back({bufferOf(t), access});
  }
}

// Note [Writes that cover their buffer]
// Note [Overwriting a failed write] (aten_mps/stream.h) lets a write that covers its whole
// buffer, reading none of it, run clean after a failed write of that buffer. The buffer the
// runtime tracks is the allocator block; a tensor's writes cover it when they reach every byte
// any tensor can read from the block: the view starts at the storage's first byte, its
// elements are dense and non-overlapping (so they fill [0, numel * itemsize) exactly), that
// range is the storage's nbytes, and the storage spans its block (it owns the block and its
// nbytes are what the allocation asked for: the block's padding up to its bucket size is never
// reachable). Anything else (a slice, a strided or expanded view, a storage that changed size
// without a new block, memory the allocator did not hand out) is not covering: the safe
// answer, since a wrong "covers" would make a lost write silent. Whether the op writes every
// element of the view and reads none is the op's to say (kOverwritingOps in ops_generic.cpp,
// copy_ in ops_memory.cpp); a read of the same buffer is its own BufferUse, which still
// inherits the failure.
inline bool coversItsBuffer(const at::Tensor& t) {
  if (!isSim(t) || t.storage_offset() != 0 || t.numel() == 0 || !t.is_non_overlapping_and_dense()) {
    return false;
  }
  const c10::Storage& storage = t.storage();
  return static_cast<size_t>(t.numel()) * t.itemsize() == storage.nbytes() &&
         storageSpansItsBlock(storage);
}

// A write of every element of `t` that reads none of them: covering if `t` covers its buffer.
inline void addOverwrite(std::vector<ts::BufferUse>& uses, const at::Tensor& t) {
  if (isSim(t) && bufferOf(t) != nullptr) {
    uses.push_back({bufferOf(t), ts::BufferUse::Access::Write, coversItsBuffer(t)});
  }
}

// A CPU tensor over the same memory, sizes and strides: what a kernel computes on. Creating it
// touches no data, so it is made on the encoding thread and used on the GPU thread.
//
// Note [Host aliases share storages]
// ATen's CPU kernels refuse inputs that partly overlap their output (a[1:] = a[:-1],
// a.add_(a.t())) by comparing storages: two host aliases of one mps_sim storage must therefore
// be views of ONE host storage, or the check never fires and the kernel silently computes
// garbage. The aliases of one op are made through one HostStorages, which maps each mps_sim
// storage to a single non-owning host storage over the same memory.
class HostStorages {
 public:
  at::Tensor alias(const at::Tensor& t);

 private:
  std::unordered_map<const void*, c10::Storage> byBase_;
};
// One tensor alone (no other argument of its op can share its storage).
at::Tensor hostAlias(const at::Tensor& t);

// Gives an mps_sim storage a new block of `newBytes`, its old contents copied through a kernel
// (resize_, UntypedStorage.resize_).
void resizeSimStorage(const c10::Storage& storage, size_t newBytes);

// Resizes an mps_sim tensor in place (resize_), copying old contents through a kernel.
void resizeSim(const at::Tensor& self, c10::IntArrayRef size,
               std::optional<c10::MemoryFormat> format = std::nullopt);

} // namespace mps_sim
