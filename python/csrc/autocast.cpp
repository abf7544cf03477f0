// Autocast on mps_sim (torch.autocast("mps_sim")). Every op passes through the AutocastPrivateUse1
// key once a region is entered; without a registration there torch raises "Could not run
// 'aten::copy_' ... from the 'Autocastmps_sim' backend" for the first op. The policy is ATen's
// shared op lists, as CUDA and MPS use them: matmuls and convolutions in the region's low
// precision, numerically sensitive ops (losses, norms, exp/log) in float32, everything else
// passes through unchanged.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace mps_sim {
namespace {

#define MPS_SIM_LOWER_PRECISION_FP(...) KERNEL_PRIVATEUSEONE(__VA_ARGS__, lower_precision_fp)
#define MPS_SIM_FP32(...) KERNEL_PRIVATEUSEONE(__VA_ARGS__, fp32)

TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(aten, AutocastPrivateUse1, m) {
  AT_FORALL_LOWER_PRECISION_FP(MPS_SIM_LOWER_PRECISION_FP)
  AT_FORALL_FP32(MPS_SIM_FP32)
}

} // namespace
} // namespace mps_sim
