// mps_sim ops that allocate, alias, resize or move memory: factories, views, copies between
// devices, resize_, set_, .item(), nonzero and record_stream.

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/unfold_native.h>
#include <ATen/ops/view_as_complex_native.h>
#include <ATen/ops/view_as_real_native.h>
#include <ATen/ops/view_native.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "allocator.h"
#include "ops.h"
#include "runtime_access.h"
#include "tensor_uses.h"

namespace mps_sim {
namespace {

using Access = ts::BufferUse::Access;
const c10::DispatchKeySet kSimKeys(c10::DispatchKey::PrivateUse1);

// The sim has one device: mps_sim:1 and beyond are refused, never silently mapped to
// mps_sim:0 (tensor.to("mps_sim:1") reaches the factories with the index it was given).
void checkAllocationDevice(const std::optional<at::Device>& where) {
  if (!where) {
    return;
  }
  TORCH_CHECK(where->type() == c10::DeviceType::PrivateUse1, "mps_sim: cannot allocate on ", *where);
  TORCH_CHECK(!where->has_index() || where->index() == 0, "mps_sim: device index ",
              int(where->index()), " is out of range: the sim has one device (mps_sim:0), "
              "torch.mps_sim.device_count() == 1");
}

at::Tensor empty(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                 std::optional<at::Layout> layout, std::optional<at::Device> where,
                 std::optional<bool>, std::optional<at::MemoryFormat> format) {
  TORCH_CHECK(!layout || *layout == at::kStrided, "mps_sim: only strided tensors are supported");
  checkAllocationDevice(where);
  return at::detail::empty_generic(size, allocator(), kSimKeys, c10::dtype_or_default(dtype),
                                   format);
}

at::Tensor emptyStrided(c10::IntArrayRef size, c10::IntArrayRef stride,
                        std::optional<at::ScalarType> dtype, std::optional<at::Layout> layout,
                        std::optional<at::Device> where, std::optional<bool> pin) {
  (void)pin;
  TORCH_CHECK(!layout || *layout == at::kStrided, "mps_sim: only strided tensors are supported");
  checkAllocationDevice(where);
  return at::detail::empty_strided_generic(size, stride, allocator(), kSimKeys,
                                           c10::dtype_or_default(dtype));
}

std::string deviceError(const at::Tensor& self, const at::Tensor& dst) {
  return c10::str("mps_sim: cannot copy from ", self.device(), " to ", dst.device(),
                  "; mps_sim copies to and from the CPU and within mps_sim only");
}

// Note [Copies]
// host -> device: the source is snapshotted on the calling thread (so a non_blocking copy
// never reads host memory the caller may change or free), then a kernel writes the buffer;
// blocking copies wait for it, as MPS does. device -> host: a kernel writes the destination,
// which the kernel keeps alive; blocking copies commit and wait on the current stream, which
// through useBuffers also covers producers on other streams; non_blocking ones return at once
// and are complete after a synchronize. device -> device: a strided source goes through the
// cached gather kernel (gatherViewTensor), encoded under its serialization domain.
at::Tensor copyFrom(const at::Tensor& self, const at::Tensor& dst, bool nonBlocking) {
  const auto wait = nonBlocking ? ts::SyncType::COMMIT : ts::SyncType::COMMIT_AND_WAIT;
  TORCH_CHECK(self.sizes() == dst.sizes() || self.numel() == dst.numel() || self.dim() == 0,
              "mps_sim: copy_ between different shapes ", self.sizes(), " and ", dst.sizes());
  if (dst.numel() == 0) {
    return dst;
  }
  if (self.device().is_cpu() && isSim(dst)) {
    at::Tensor staged = at::empty(dst.sizes(), dst.options().device(c10::DeviceType::CPU));
    staged.copy_(self);
    std::vector<ts::BufferUse> uses;
    addOverwrite(uses, dst); // every element of dst, read from the host
    encodeKernel(uses, [alias = hostAlias(dst), staged] { alias.copy_(staged); }, nullptr, wait);
    return dst;
  }
  if (isSim(self) && dst.device().is_cpu()) {
    std::vector<ts::BufferUse> uses;
    addUse(uses, self, Access::Read);
    encodeKernel(uses, [alias = hostAlias(self), dst] { dst.copy_(alias); }, nullptr, wait);
    return dst;
  }
  TORCH_CHECK(isSim(self) && isSim(dst), deviceError(self, dst));
  std::vector<ts::BufferUse> uses;
  addUse(uses, self, Access::Read);
  addOverwrite(uses, dst); // every element of dst; a self sharing its buffer is read above
  // A copy between overlapping parts of one storage (a[1:] = a[:-1]) is refused here, at the
  // call, as ATen refuses it on the CPU; the host aliases share one storage besides (Note [Host
  // aliases share storages]).
  at::assert_no_internal_overlap(dst);
  at::assert_no_partial_overlap(dst, self);
  HostStorages hostStorages;
  at::Tensor from = hostStorages.alias(self);
  at::Tensor to = hostStorages.alias(dst);
  auto kernel = [from, to] { to.copy_(from); };
  if (!self.is_contiguous()) {
    SharedKernel gather = sharedKernel(
        "gatherViewTensor", c10::str(c10::toString(self.scalar_type()), self.dim()));
    encodeKernel(uses, std::move(kernel), &gather);
  } else {
    encodeKernel(uses, std::move(kernel));
  }
  return dst;
}

at::Tensor copyFromAndResize(const at::Tensor& self, const at::Tensor& dst) {
  if (isSim(dst)) {
    resizeSim(dst, self.sizes());
  } else {
    dst.resize_(self.sizes());
  }
  return copyFrom(self, dst, false);
}

const at::Tensor& resize(const at::Tensor& self, c10::IntArrayRef size,
                         std::optional<c10::MemoryFormat> format) {
  resizeSim(self, size, format);
  return self;
}

at::Scalar localScalarDense(const at::Tensor& self) {
  TORCH_CHECK(self.numel() == 1, "mps_sim: a Tensor with ", self.numel(),
              " elements cannot be converted to Scalar");
  at::Tensor host = at::empty({}, self.options().device(c10::DeviceType::CPU));
  std::vector<ts::BufferUse> uses;
  addUse(uses, self, Access::Read);
  encodeKernel(uses, [alias = hostAlias(self).reshape({}), host] { host.copy_(alias); },
               nullptr, ts::SyncType::COMMIT_AND_WAIT);
  return host.item();
}

// The result's size depends on the data: compute it and wait (MPS synchronizes here too),
// then upload it.
at::Tensor nonzero(const at::Tensor& self) {
  auto result = std::make_shared<at::Tensor>();
  std::vector<ts::BufferUse> uses;
  addUse(uses, self, Access::Read);
  encodeKernel(uses, [alias = hostAlias(self), result] { *result = at::nonzero(alias); },
               nullptr, ts::SyncType::COMMIT_AND_WAIT);
  at::Tensor out = empty(result->sizes(), at::kLong, std::nullopt, std::nullopt, std::nullopt,
                         std::nullopt);
  copyFrom(*result, out, true);
  return out;
}

// Note [record_stream records, it does not encode]
// As torch.cuda's: the stream now also uses the buffer, so a later free waits for the work
// that stream has been given so far (PendingFrees), and a later write on another stream waits
// for it (the tracker's read set). It is recorded in the tracker only, in the batch of the
// stream's latest work, as the c10 guard's recordDataPtrOnStream does in the patch (0004).
// It used to be a read encoded on that stream (useBuffers), which put a GPU wait for the
// buffer's last write into the stream's open batch: work nobody would ever commit, so a
// single thread's record_stream left the device "in flight" and set_threadsafe refused to
// switch. An op that later reads the buffer on that stream orders itself, as every op does.
void recordStream(at::Tensor& self, at::Stream s) {
  TORCH_CHECK(isSim(self), "mps_sim: record_stream needs an mps_sim tensor");
  TORCH_CHECK(s.device_type() == c10::DeviceType::PrivateUse1, "mps_sim: record_stream got a ",
              c10::DeviceTypeName(s.device_type()), " stream; use an mps_sim stream");
  ts::Stream& stream = runtime().stream(static_cast<int>(s.id()));
  std::vector<ts::BufferUse> uses;
  addUse(uses, self, Access::Read);
  // One load: the batch that holds the stream's latest work (issue 8.5); 0: it has done
  // nothing yet, so nothing of it can still be using the buffer.
  const uint64_t batch = stream.batchOfLatestWork();
  if (uses.empty() || batch == 0) {
    return;
  }
  runtime().bufferUses().record(stream, uses.data(), uses.size(), batch);
}

at::Tensor& setStorage(at::Tensor& self, at::Storage source, int64_t offset,
                       c10::IntArrayRef size, c10::IntArrayRef stride) {
  TORCH_CHECK(source.device().type() == c10::DeviceType::PrivateUse1,
              "mps_sim: set_ needs an mps_sim storage, got one on ", source.device());
  auto* impl = self.unsafeGetTensorImpl();
  impl->set_storage_keep_dtype(std::move(source));
  impl->set_storage_offset(offset);
  if (stride.empty()) {
    impl->set_sizes_contiguous(size);
  } else {
    impl->set_sizes_and_strides(size, stride);
  }
  return self;
}

at::Tensor& setSourceStorage(at::Tensor& self, at::Storage source) {
  const int64_t numel = static_cast<int64_t>(source.nbytes() / self.dtype().itemsize());
  return setStorage(self, std::move(source), 0, {numel}, {});
}

at::Tensor& setSourceTensor(at::Tensor& self, const at::Tensor& source) {
  return setStorage(self, source.storage(), source.storage_offset(), source.sizes(),
                    source.strides());
}

at::Tensor& setEmpty(at::Tensor& self) {
  at::Storage storage(at::Storage::use_byte_size_t(), 0, allocator(), true);
  return setStorage(self, std::move(storage), 0, {0}, {});
}

} // namespace

void resizeSimStorage(const c10::Storage& storage, size_t newBytes) {
  TORCH_CHECK(storage.device_type() == c10::DeviceType::PrivateUse1,
              "mps_sim: resizing a storage on ", storage.device());
  TORCH_CHECK(storage.resizable(), "mps_sim: trying to resize a storage that is not resizable");
  c10::DataPtr fresh = allocator()->allocate(newBytes);
  const size_t keptBytes = std::min(storage.nbytes(), newBytes);
  if (keptBytes > 0) {
    // Copy the old contents on the GPU timeline; the old block is freed through the
    // allocator once the copy (a recorded read) has completed.
    std::vector<ts::BufferUse> uses{{storage.data_ptr().get(), Access::Read},
                                    {fresh.get(), Access::Write}};
    encodeKernel(uses, [from = storage.data_ptr().get(), to = fresh.get(), keptBytes] {
      std::memcpy(to, from, keptBytes);
    });
  }
  // Storage is a handle: the const is the handle's, the storage itself is shared.
  c10::Storage target = storage;
  target.set_data_ptr_noswap(std::move(fresh));
  target.set_nbytes(newBytes);
}

void resizeSim(const at::Tensor& self, c10::IntArrayRef size,
               std::optional<c10::MemoryFormat> format) {
  TORCH_CHECK(isSim(self), "mps_sim: resize_ of a tensor on ", self.device());
  auto* impl = self.unsafeGetTensorImpl();
  const size_t itemsize = self.dtype().itemsize();
  int64_t numel = 1;
  for (int64_t s : size) {
    TORCH_CHECK(s >= 0, "mps_sim: resize_ to negative size ", size);
    numel *= s;
  }
  const size_t needed = (static_cast<size_t>(numel) + self.storage_offset()) * itemsize;
  if (needed > self.storage().nbytes()) {
    resizeSimStorage(self.storage(), needed);
  }
  impl->set_sizes_contiguous(size);
  if (format && *format != c10::MemoryFormat::Contiguous) {
    impl->empty_tensor_restride(*format);
  }
}

const std::vector<std::string>& specialOps() {
  static const std::vector<std::string> names = {
      "aten::empty.memory_format", "aten::empty_strided", "aten::as_strided", "aten::view",
      "aten::_reshape_alias", "aten::unfold", "aten::view_as_real", "aten::view_as_complex", "aten::_copy_from", "aten::_copy_from_and_resize", "aten::resize_",
      "aten::_local_scalar_dense", "aten::nonzero", "aten::record_stream",
      "aten::set_.source_Storage", "aten::set_.source_Storage_storage_offset",
      "aten::set_.source_Tensor", "aten::set_", "aten::_transformer_encoder_layer_fwd",
      "aten::_native_multi_head_attention", "aten::_fused_sdp_choice"};
  return names;
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", TORCH_FN(empty));
  m.impl("empty_strided", TORCH_FN(emptyStrided));
  m.impl("as_strided", TORCH_FN(at::native::as_strided_tensorimpl));
  m.impl("view", TORCH_FN(at::native::view));
  m.impl("_reshape_alias", TORCH_FN(at::native::_reshape_alias));
  // Views compute sizes and strides only (ATen's device-generic kernels, as MPS registers
  // them): no data is touched, so nothing is encoded; the ops that later read the view go
  // through the stream and the tracker with the view's storage.
  m.impl("unfold", TORCH_FN(at::native::unfold));
  m.impl("view_as_real", TORCH_FN(at::native::view_as_real));
  m.impl("view_as_complex", TORCH_FN(at::native::view_as_complex));
  m.impl("_copy_from", TORCH_FN(copyFrom));
  m.impl("_copy_from_and_resize", TORCH_FN(copyFromAndResize));
  m.impl("resize_", TORCH_FN(resize));
  m.impl("_local_scalar_dense", TORCH_FN(localScalarDense));
  m.impl("nonzero", TORCH_FN(nonzero));
  m.impl("record_stream", TORCH_FN(recordStream));
  m.impl("set_.source_Storage", TORCH_FN(setSourceStorage));
  m.impl("set_.source_Storage_storage_offset", TORCH_FN(setStorage));
  m.impl("set_.source_Tensor", TORCH_FN(setSourceTensor));
  m.impl("set_", TORCH_FN(setEmpty));
}

} // namespace mps_sim
