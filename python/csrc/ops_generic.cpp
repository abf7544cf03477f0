// Most mps_sim ops share one boxed kernel (Note [The generic op kernel]); this file holds it,
// the list of ops it serves, and the fallback that refuses every other op by name.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "ops.h"
#include "runtime_access.h"
#include "tensor_uses.h"

namespace mps_sim {

at::Tensor HostStorages::alias(const at::Tensor& t) {
  auto options = t.options().device(c10::DeviceType::CPU);
  if (t.numel() == 0 || t.data_ptr() == nullptr) {
    return at::empty_strided(t.sizes(), t.strides(), options);
  }
  const c10::Storage& storage = t.storage();
  void* base = const_cast<void*>(storage.data());
  auto found = byBase_.find(base);
  if (found == byBase_.end()) {
    // Non-owning: the mps_sim storage (kept alive by the op's tensors) owns the memory.
    c10::Storage host(c10::Storage::use_byte_size_t(), storage.nbytes(),
                      c10::DataPtr(base, c10::Device(c10::DeviceType::CPU)), nullptr, false);
    found = byBase_.emplace(base, std::move(host)).first;
  }
  return at::empty({0}, options).set_(found->second, t.storage_offset(), t.sizes(), t.strides());
}

at::Tensor hostAlias(const at::Tensor& t) {
  return HostStorages().alias(t);
}

namespace {

// Note [The generic op kernel]
// An op on mps_sim runs in two halves, like an MPS op:
// - on the calling thread, the op runs on meta tensors of the same shapes: argument checks
//   raise here, synchronously, with the op's own message, and the result shapes are known
//   without touching data; the results are allocated on mps_sim;
// - the kernel, encoded on the current stream (Note [Encoding an op]), runs the op's CPU
//   implementation on host aliases of the buffers when the sim GPU executes it, and writes
//   the results into the allocated outputs.
// In-place and out= ops write their mutable arguments directly. Only the ops listed in
// kGenericOps get this kernel; everything else raises NotImplementedError (unsupportedOp).

// Ops whose MPS implementation encodes a cached graph shared by all threads.
const char* sharedClassOf(const c10::OperatorName& name) {
  if (name.name == "aten::native_layer_norm") {
    return "layer_norm";
  }
  return nullptr;
}

// Ops that write every element of their mutable arguments and read none of them: fills,
// random fills and out= ops (the out tensor is resized to the result and written whole). Their
// write of a tensor covering its buffer is covering (Note [Writes that cover their buffer]);
// an input that shares the buffer is a read of its own. Listed one by one: an op missing here
// is treated as reading what it writes (add_, index_put_, masked_fill_, scatter_), the safe
// default.
bool overwritesItsOutputs(const c10::OperatorName& name) {
  static const std::unordered_map<std::string, std::vector<std::string>> kOverwritingOps = {
      {"aten::fill_", {"Scalar", "Tensor"}},
      {"aten::zero_", {""}},
      {"aten::normal_", {""}},
      {"aten::uniform_", {""}},
      {"aten::random_", {"", "from", "to"}},
      {"aten::bernoulli_", {"float"}},
      {"aten::add", {"out"}},
      {"aten::sub", {"out"}},
      {"aten::mul", {"out"}},
      {"aten::div", {"out"}},
      {"aten::arange", {"start_out"}},
      {"aten::linspace", {"out"}},
      {"aten::bitwise_and", {"Tensor_out"}},
      {"aten::bitwise_or", {"Tensor_out"}},
      {"aten::nan_to_num", {"out"}},
      {"aten::mm", {"out"}},
      {"aten::sum", {"IntList_out"}},
      {"aten::cumsum", {"out"}},
      {"aten::clamp", {"out", "Tensor_out"}},
      {"aten::floor_divide", {"out"}},
  };
  auto found = kOverwritingOps.find(name.name);
  return found != kOverwritingOps.end() &&
         std::find(found->second.begin(), found->second.end(), name.overload_name) !=
             found->second.end();
}

struct Args {
  std::vector<c10::IValue> meta;
  std::vector<c10::IValue> host;
  std::vector<ts::BufferUse> uses;
  std::string shapeKey;
  std::string signature; // Note [Shape cache]
  bool cacheable = true;
  HostStorages hostStorages; // Note [Host aliases share storages]
};

void appendTensorSignature(std::string& key, const at::Tensor& t) {
  if (!t.defined()) {
    key += "u;";
    return;
  }
  key += isSim(t) ? 'T' : 'c';
  key += c10::toString(t.scalar_type());
  for (int64_t size : t.sizes()) {
    key += ',';
    key += std::to_string(size);
  }
  key += '/';
  for (int64_t stride : t.strides()) {
    key += std::to_string(stride);
    key += ',';
  }
  key += ';';
}

// Appends a non-tensor argument; false when its type is not one the key can hold.
bool appendValueSignature(std::string& key, const c10::IValue& v) {
  char buffer[64];
  if (v.isNone()) {
    key += "n;";
  } else if (v.isBool()) {
    key += v.toBool() ? "b1;" : "b0;";
  } else if (v.isInt()) {
    key += 'i' + std::to_string(v.toInt()) + ';';
  } else if (v.isDouble()) {
    std::snprintf(buffer, sizeof(buffer), "d%a;", v.toDouble());
    key += buffer;
  } else if (v.isIntList()) {
    key += 'L';
    for (int64_t i : v.toIntVector()) {
      key += std::to_string(i) + ',';
    }
    key += ';';
  } else if (v.isString()) {
    key += 's' + v.toStringRef() + ';';
  } else if (v.isGenerator()) {
    key += "g;"; // a generator changes values, never shapes
  } else if (v.isDevice()) {
    key += "D" + v.toDevice().str() + ';';
  } else {
    return false;
  }
  return true;
}

[[noreturn]] void wrongDevice(const c10::OperatorHandle& op, const std::string& argName,
                              const at::Tensor& t) {
  TORCH_CHECK(false, "mps_sim: ", op.schema().operator_name(), " got argument '", argName,
              "' on ", t.device(), " while other arguments are on mps_sim. Move it to the "
              "device first (tensor.to('mps_sim')); only 0-dim CPU tensors may be mixed in.");
}

// Maps one tensor argument to its meta and host forms.
// `overwritten`: the op writes every element of `t` and reads none (overwritesItsOutputs).
void mapTensor(const c10::OperatorHandle& op, const std::string& argName, const at::Tensor& t,
               bool written, bool overwritten, Args& out, at::Tensor& meta, at::Tensor& host) {
  if (!t.defined()) {
    meta = t;
    host = t;
    return;
  }
  if (isSim(t)) {
    meta = at::empty_strided(t.sizes(), t.strides(), t.options().device(c10::DeviceType::Meta));
    host = out.hostStorages.alias(t);
    if (overwritten) {
      addOverwrite(out.uses, t);
    } else {
      addUse(out.uses, t, written ? ts::BufferUse::Access::Write : ts::BufferUse::Access::Read);
    }
    // Cache key of shared kernel objects (per shape and dtype, as MPSGraphCache keys are);
    // built without iostreams, this runs for every op.
    for (int64_t size : t.sizes()) {
      out.shapeKey += std::to_string(size);
      out.shapeKey += ',';
    }
    out.shapeKey += c10::toString(t.scalar_type());
    out.shapeKey += ';';
    return;
  }
  if (t.device().is_cpu() && t.dim() == 0) {
    meta = t; // a CPU scalar mixes with any device, as on CUDA and MPS
    host = t;
    return;
  }
  wrongDevice(op, argName, t);
}

Args mapArguments(const c10::OperatorHandle& op, const torch::jit::Stack& stack, size_t first) {
  const auto& schema = op.schema();
  Args out;
  const bool overwrites = overwritesItsOutputs(schema.operator_name());
  out.signature = toString(schema.operator_name());
  out.signature += '|';
  for (size_t i = 0; i < schema.arguments().size(); ++i) {
    const auto& arg = schema.arguments()[i];
    const bool written = arg.alias_info() != nullptr && arg.alias_info()->isWrite();
    const bool overwritten = written && overwrites;
    const c10::IValue& value = stack[first + i];
    if (value.isTensor()) {
      appendTensorSignature(out.signature, value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorVector()) {
        appendTensorSignature(out.signature, t);
      }
      out.signature += ']';
    } else if (value.isList() && arg.type()->str().find("Tensor?[]") == 0) {
      for (const c10::IValue& element : value.toListRef()) {
        appendTensorSignature(out.signature, element.isNone() ? at::Tensor() : element.toTensor());
      }
      out.signature += ']';
    } else if (!appendValueSignature(out.signature, value)) {
      out.cacheable = false;
    }
    if (value.isTensor()) {
      at::Tensor meta, host;
      mapTensor(op, arg.name(), value.toTensor(), written, overwritten, out, meta, host);
      out.meta.emplace_back(meta);
      out.host.emplace_back(host);
    } else if (value.isTensorList()) {
      std::vector<at::Tensor> metas, hosts;
      for (const at::Tensor& t : value.toTensorVector()) {
        at::Tensor meta, host;
        mapTensor(op, arg.name(), t, written, overwritten, out, meta, host);
        metas.push_back(meta);
        hosts.push_back(host);
      }
      out.meta.emplace_back(c10::List<at::Tensor>(metas));
      out.host.emplace_back(c10::List<at::Tensor>(hosts));
    } else if (value.isList() && arg.type()->str().find("Tensor?[]") == 0) {
      c10::List<std::optional<at::Tensor>> metas, hosts;
      for (const c10::IValue& element : value.toListRef()) {
        if (element.isNone()) {
          metas.push_back(std::nullopt);
          hosts.push_back(std::nullopt);
          continue;
        }
        at::Tensor meta, host;
        mapTensor(op, arg.name(), element.toTensor(), written, overwritten, out, meta, host);
        metas.push_back(meta);
        hosts.push_back(host);
      }
      out.meta.emplace_back(metas);
      out.host.emplace_back(hosts);
    } else {
      out.meta.push_back(value);
      out.host.push_back(value);
    }
  }
  return out;
}

// Note [Shape cache]
// The meta call that checks an op's arguments and gives its result shapes may run Python (many
// meta kernels are registered from torch/_meta_registrations.py), which holds the GIL and
// serializes every thread that encodes. Models run the same ops on the same shapes again and
// again, so results are cached by signature: op, each tensor's sizes, strides and dtype, and
// every other argument's value. A signature whose meta call raised is never cached, so bad
// input raises every time. Lock-protected, like MPS's graph cache; reads share the lock.
struct OutputShape {
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  bool defined = true; // backward kernels return undefined tensors for masked-off outputs
};
struct ShapeResult {
  std::vector<OutputShape> outputs; // functional ops
  std::vector<std::pair<int, std::vector<int64_t>>> written; // mutating ops: arg -> sizes
};

constexpr size_t kMaxCachedShapes = 65536;
std::shared_mutex shapeMutex;
auto* shapeCache = new std::unordered_map<std::string, std::shared_ptr<const ShapeResult>>();

std::shared_ptr<const ShapeResult> lookupShapes(const std::string& signature) {
  std::shared_lock<std::shared_mutex> lock(shapeMutex);
  auto it = shapeCache->find(signature);
  return it == shapeCache->end() ? nullptr : it->second;
}

void storeShapes(const std::string& signature, std::shared_ptr<const ShapeResult> shapes) {
  std::unique_lock<std::shared_mutex> lock(shapeMutex);
  if (shapeCache->size() >= kMaxCachedShapes) {
    shapeCache->clear(); // shapes that keep changing: start over rather than grow
  }
  shapeCache->emplace(signature, std::move(shapes));
}

// For a mutating op: the argument index each aliased return refers to.
int argumentAliasedBy(const c10::FunctionSchema& schema, size_t returnIndex) {
  const auto* info = schema.returns()[returnIndex].alias_info();
  if (info == nullptr) {
    return -1;
  }
  for (size_t i = 0; i < schema.arguments().size(); ++i) {
    const auto* argInfo = schema.arguments()[i].alias_info();
    if (argInfo != nullptr && argInfo->beforeSets() == info->beforeSets()) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

// Boolean masks in x[mask] select a data-dependent number of elements, which no meta kernel
// can size: turn each into its long indices first (nonzero synchronizes, as on MPS and CUDA).
void expandBoolIndices(c10::IValue& indices) {
  bool anyMask = false;
  for (const c10::IValue& element : indices.toListRef()) {
    if (element.isTensor() && (element.toTensor().scalar_type() == at::kBool ||
                               element.toTensor().scalar_type() == at::kByte)) {
      anyMask = true;
    }
  }
  if (!anyMask) {
    return;
  }
  c10::List<std::optional<at::Tensor>> expanded;
  for (const c10::IValue& element : indices.toListRef()) {
    if (!element.isTensor()) {
      expanded.push_back(std::nullopt);
      continue;
    }
    const at::Tensor& index = element.toTensor();
    if (index.scalar_type() != at::kBool && index.scalar_type() != at::kByte) {
      expanded.push_back(index);
      continue;
    }
    const at::Tensor positions = at::nonzero(index);
    for (int64_t dim = 0; dim < index.dim(); ++dim) {
      expanded.push_back(positions.select(1, dim));
    }
  }
  indices = expanded;
}

// Note [Kernel errors]
// A kernel that throws on the sim GPU fails its batch; the message every dependent receives is
// the kernel's (Note [GPU errors belong to batches]). It names the op (a thread whose own work
// was skipped in a shared batch must learn whose op failed) and carries ATen's message without
// its C++ backtrace, which would bury it.
std::runtime_error kernelError(const c10::OperatorHandle& op, const c10::Error& e) {
  return std::runtime_error(
      c10::str(op.schema().operator_name(), " failed: ", e.what_without_backtrace()));
}

void genericKernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t nargs = schema.arguments().size();
  const size_t first = stack->size() - nargs;
  const std::string& opName = schema.operator_name().name;
  if (opName == "aten::index" || opName == "aten::index_put_" || opName == "aten::index_put") {
    expandBoolIndices((*stack)[first + 1]);
  }
  Args args = mapArguments(op, *stack, first);

  bool mutates = false;
  for (const auto& arg : schema.arguments()) {
    mutates = mutates || (arg.alias_info() != nullptr && arg.alias_info()->isWrite());
  }

  // Shape inference and argument checks, synchronously, on meta tensors; or the cached
  // result of that for the same signature (Note [Shape cache]).
  std::shared_ptr<const ShapeResult> shapes = args.cacheable ? lookupShapes(args.signature) : nullptr;
  if (!shapes) {
    torch::jit::Stack metaStack = args.meta;
    op.callBoxed(metaStack);
    auto computed = std::make_shared<ShapeResult>();
    if (mutates) {
      for (size_t i = 0; i < nargs; ++i) {
        const auto* info = schema.arguments()[i].alias_info();
        if (info != nullptr && info->isWrite() && args.meta[i].isTensor()) {
          computed->written.emplace_back(static_cast<int>(i), args.meta[i].toTensor().sizes().vec());
        }
      }
    } else {
      for (const c10::IValue& result : metaStack) {
        TORCH_CHECK(result.isTensor() || result.isNone(), "mps_sim: ", schema.operator_name(),
                    " returns a non-tensor value, which the generic kernel cannot produce");
        if (result.isNone() || !result.toTensor().defined()) {
          computed->outputs.push_back({{}, {}, at::kFloat, false});
          continue;
        }
        const at::Tensor& shaped = result.toTensor();
        computed->outputs.push_back(
            {shaped.sizes().vec(), shaped.strides().vec(), shaped.scalar_type()});
      }
    }
    shapes = computed;
    if (args.cacheable) {
      storeShapes(args.signature, computed);
    }
  }

  std::vector<at::Tensor> outputs; // mps_sim results (functional ops)
  std::vector<at::Tensor> outputAliases;
  if (mutates) {
    // out= arguments the op resized (empty outputs of arange/cat...): resize ours to match.
    for (const auto& [i, sizes] : shapes->written) {
      const c10::IValue& original = (*stack)[first + i];
      const at::Tensor& target = original.toTensor();
      if (isSim(target) && target.sizes() != c10::IntArrayRef(sizes)) {
        resizeSim(target, sizes);
        args.host[i] = args.hostStorages.alias(target);
        args.uses.push_back({bufferOf(target), ts::BufferUse::Access::Write});
      }
    }
  } else {
    for (const auto& shaped : shapes->outputs) {
      if (!shaped.defined) {
        outputAliases.emplace_back();
        outputs.emplace_back();
        continue;
      }
      at::Tensor output = at::empty_strided(
          shaped.sizes, shaped.strides, at::TensorOptions().dtype(shaped.dtype).device(device()));
      addUse(args.uses, output, ts::BufferUse::Access::Write);
      outputAliases.push_back(hostAlias(output));
      outputs.push_back(std::move(output));
    }
  }

  auto kernel = [op, host = std::move(args.host), outputAliases]() {
    // Host aliases carry no autograd history; skip the autograd layers on the GPU thread.
    at::AutoDispatchBelowADInplaceOrView belowAutograd;
    torch::jit::Stack hostStack = host;
    try {
      op.callBoxed(hostStack);
    } catch (const c10::Error& e) {
      throw kernelError(op, e); // the GPU error names the op (Note [Kernel errors])
    }
    for (size_t i = 0; i < outputAliases.size(); ++i) {
      if (outputAliases[i].defined() && outputAliases[i].numel() > 0) {
        outputAliases[i].copy_(hostStack[i].toTensor());
      }
    }
  };
  if (const char* opClass = sharedClassOf(schema.operator_name())) {
    SharedKernel shared = sharedKernel(opClass, args.shapeKey);
    encodeKernel(args.uses, std::move(kernel), &shared);
  } else {
    encodeKernel(args.uses, std::move(kernel));
  }

  torch::jit::Stack original(stack->begin() + first, stack->end());
  torch::jit::drop(*stack, nargs);
  if (mutates) {
    for (size_t r = 0; r < schema.returns().size(); ++r) {
      const int argIndex = argumentAliasedBy(schema, r);
      TORCH_INTERNAL_ASSERT(argIndex >= 0, "mps_sim: return ", r, " of ",
                            schema.operator_name(), " aliases no argument");
      stack->push_back(original[argIndex]);
    }
  } else {
    for (at::Tensor& output : outputs) {
      stack->emplace_back(std::move(output));
    }
  }
}

// Note [Data-dependent results]
// masked_select, unique and equal produce results whose size (or value) depends on the data,
// which no meta kernel can give. As nonzero does (and MPS and CUDA do), they compute on the
// GPU timeline and the caller waits for the result (COMMIT_AND_WAIT); tensor results are then
// uploaded to mps_sim on the current stream, other results (equal's bool) returned as they are.
// Argument errors come from the CPU kernel and reach the caller through the wait.
void dataDependentKernel(const c10::OperatorHandle& op, c10::DispatchKeySet,
                         torch::jit::Stack* stack) {
  const size_t nargs = op.schema().arguments().size();
  const size_t first = stack->size() - nargs;
  Args args = mapArguments(op, *stack, first);
  auto results = std::make_shared<torch::jit::Stack>();
  encodeKernel(
      args.uses,
      [op, host = std::move(args.host), results] {
        at::AutoDispatchBelowADInplaceOrView belowAutograd;
        *results = host;
        try {
          op.callBoxed(*results);
        } catch (const c10::Error& e) {
          throw kernelError(op, e);
        }
      },
      nullptr, ts::SyncType::COMMIT_AND_WAIT);
  torch::jit::drop(*stack, nargs);
  for (const c10::IValue& result : *results) {
    if (!result.isTensor()) {
      stack->push_back(result);
      continue;
    }
    const at::Tensor computed = result.toTensor().contiguous();
    at::Tensor uploaded =
        at::empty(computed.sizes(), at::TensorOptions().dtype(computed.scalar_type()).device(device()));
    if (uploaded.numel() > 0) {
      uploaded.copy_(computed, /*non_blocking=*/true); // the host side is snapshotted first
    }
    stack->emplace_back(std::move(uploaded));
  }
}

// Ops mps_sim refuses with the project's message rather than torch's generic one (the
// PrivateUse1 convolution entry points would otherwise report "convolution_overrideable not
// implemented", which names no op the user called).
void unsupportedConvolution(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack*) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      false, "The operator 'aten::convolution' (nn.Conv1d/2d/3d, F.conv*) is not implemented for "
      "the mps_sim device. mps_sim runs every op through the thread-safe runtime and has no "
      "silent CPU fallback; move the tensors to the CPU (tensor.cpu()) for this op, or add it to "
      "python/csrc/ops_generic.cpp.");
}

void unsupportedOp(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack*) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      false, "The operator '", op.schema().operator_name(),
      "' is not implemented for the mps_sim device. mps_sim runs every op through the "
      "thread-safe runtime and has no silent CPU fallback; move the tensors to the CPU "
      "(tensor.cpu()) for this op, or add it to python/csrc/ops_generic.cpp.");
}

// The ops served by genericKernel. Names missing from the running torch are skipped.
constexpr const char* kGenericOps[] = {
    // elementwise arithmetic and comparisons
    "add.Tensor", "add_.Tensor", "add.out", "sub.Tensor", "sub_.Tensor", "sub.out",
    "mul.Tensor", "mul_.Tensor", "mul.out", "div.Tensor", "div_.Tensor", "div.out",
    "div.Tensor_mode", "div_.Tensor_mode", "neg", "neg_", "abs", "exp", "exp_", "log", "sqrt",
    "rsqrt", "reciprocal", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow_.Scalar", "sin",
    "cos", "tanh", "tanh_", "sigmoid", "sigmoid_", "erf", "sign", "clamp", "clamp_",
    "clamp_min", "clamp_min_", "clamp_max", "maximum", "minimum", "where.self", "addcmul",
    "addcdiv", "lerp.Scalar", "eq.Tensor", "eq.Scalar", "ne.Tensor", "ne.Scalar", "lt.Tensor",
    "lt.Scalar", "le.Tensor", "le.Scalar", "gt.Tensor", "gt.Scalar", "ge.Tensor", "ge.Scalar",
    "logical_not", "logical_and", "logical_or", "bitwise_and.Tensor", "bitwise_or.Tensor",
    "bitwise_not", "isnan", "isinf", "isneginf.out", "isposinf.out", "masked_fill_.Scalar",
    "masked_fill_.Tensor", "where.self_out", "_safe_softmax", "mul.Scalar", "logical_not.out",
    // activations and normalization
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "leaky_relu", "hardtanh", "threshold",
    "_softmax", "_log_softmax", "native_layer_norm",
    // reductions
    "sum", "sum.dim_IntList", "mean", "mean.dim", "max", "max.dim", "min", "min.dim", "amax",
    "amin", "argmax", "argmin", "prod", "var.correction", "std.correction",
    "linalg_vector_norm", "all", "any", "all.dim", "any.dim", "cumsum", "sort", "topk",
    // linear algebra
    "mm", "addmm", "addmm_", "bmm", "baddbmm", "addmv", "dot",
    // data movement that computes (views are in ops_memory.cpp)
    "cat", "index_select", "gather", "index.Tensor", "index_put_", "index_put", "tril", "triu", "flip", "roll",
    // factories and fills
    "fill_.Scalar", "fill_.Tensor", "zero_", "normal_", "uniform_", "random_", "random_.from",
    "random_.to", "bernoulli_.float", "arange.start_out", "linspace.out",
    // more elementwise and reductions (printing, numerics)
    "bitwise_and.Tensor_out", "bitwise_or.Tensor_out", "bitwise_and_.Tensor", "bitwise_or_.Tensor",
    "logical_and_", "logical_or_", "ceil", "floor", "round", "trunc", "nan_to_num", "nan_to_num_",
    "nan_to_num.out", "sort.stable", "scatter_add", "scatter_add_", "scatter.src", "scatter_.src",
    "scatter.value", "scatter_.value", "exp2", "log2", "log1p", "expm1",
    // floor division (a // b), clamp with tensor bounds, and out= variants users call
    "floor_divide", "floor_divide_.Tensor", "floor_divide.out", "clamp.Tensor", "clamp_.Tensor",
    "clamp.Tensor_out", "clamp.out", "mm.out", "sum.IntList_out", "cumsum.out", "cumsum_",
    // losses
    "nll_loss_forward", "nll_loss_backward", "mse_loss", "mse_loss_backward",
    // backward kernels of the ops above (autograd runs them on the device's worker thread)
    "threshold_backward", "gelu_backward", "silu_backward", "sigmoid_backward", "tanh_backward",
    "native_layer_norm_backward", "_softmax_backward_data", "_log_softmax_backward_data",
    "embedding_dense_backward", "leaky_relu_backward", "hardtanh_backward",
};

// Ops served by dataDependentKernel (Note [Data-dependent results]).
constexpr const char* kDataDependentOps[] = {
    "masked_select", "equal", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "unique_dim_consecutive",
};

std::vector<std::string>& registered() {
  static std::vector<std::string> names;
  return names;
}

} // namespace

std::vector<std::string> implementedOps() {
  std::vector<std::string> names = registered();
  for (const auto& name : specialOps()) {
    names.push_back(name);
  }
  return names;
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&unsupportedOp>());
}

bool hasSchema(const std::string& name) {
  const auto dot = name.find('.');
  const std::string base = name.substr(0, dot);
  const std::string overload = dot == std::string::npos ? "" : name.substr(dot + 1);
  return c10::Dispatcher::singleton().findSchema({"aten::" + base, overload}).has_value();
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  for (const char* name : kGenericOps) {
    if (hasSchema(name)) {
      m.impl(name, torch::CppFunction::makeFromBoxedFunction<&genericKernel>());
      registered().push_back(std::string("aten::") + name);
    }
  }
  for (const char* name : kDataDependentOps) {
    if (hasSchema(name)) {
      m.impl(name, torch::CppFunction::makeFromBoxedFunction<&dataDependentKernel>());
      registered().push_back(std::string("aten::") + name);
    }
  }
  for (const char* name : {"convolution_overrideable", "convolution_backward_overrideable"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&unsupportedConvolution>());
  }
}

} // namespace mps_sim
