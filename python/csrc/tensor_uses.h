#pragma once

// Helpers shared by the op files: which tensors live on mps_sim, their buffers (for the
// runtime's use tracking) and host aliases of their memory (for the kernels to compute on).

#include <ATen/core/Tensor.h>

#include <vector>

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

// A CPU tensor over the same memory, sizes and strides: what a kernel computes on. Creating it
// touches no data, so it is made on the encoding thread and used on the GPU thread.
at::Tensor hostAlias(const at::Tensor& t);

// Gives an mps_sim storage a new block of `newBytes`, its old contents copied through a kernel
// (resize_, UntypedStorage.resize_).
void resizeSimStorage(const c10::Storage& storage, size_t newBytes);

// Resizes an mps_sim tensor in place (resize_), copying old contents through a kernel.
void resizeSim(const at::Tensor& self, c10::IntArrayRef size,
               std::optional<c10::MemoryFormat> format = std::nullopt);

} // namespace mps_sim
