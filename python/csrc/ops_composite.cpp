// The fused transformer entry points, implemented by composition of mps_sim ops.
//
// Note [Transformer fast path]
// nn.TransformerEncoderLayer and nn.MultiheadAttention take a "fast path" in eval/no_grad on
// the CPU, CUDA and the PrivateUse1 device (which mps_sim is), calling the fused ops
// _transformer_encoder_layer_fwd / _native_multi_head_attention. MPS is not on that list, so
// on a Mac the layer runs the slow path: linear projections, attention by matmul + softmax,
// residual adds, layer_norm. We implement the fused ops as exactly that sequence of ops, so
// mps_sim exercises what MPS exercises (including the layer_norm and strided-gather
// serialization domains) rather than one opaque kernel.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace mps_sim {
namespace {

// Additive attention mask of shape broadcastable to (B, H, Lq, Lk), from the fast path's
// mask and mask_type (0: attn_mask (Lq, Lk); 1: key padding (B, Lk); 2: merged (B, H, Lq, Lk)).
at::Tensor additiveMask(const at::Tensor& mask, std::optional<int64_t> maskType, int64_t batch,
                        const at::Tensor& like) {
  at::Tensor m = mask;
  if (maskType.value_or(0) == 1 || (m.dim() == 2 && m.size(0) == batch && !maskType)) {
    m = m.view({m.size(0), 1, 1, m.size(1)});
  }
  if (m.scalar_type() == at::kBool) {
    return at::zeros_like(m, like.options()).masked_fill_(m, -std::numeric_limits<double>::infinity());
  }
  return m.to(like.scalar_type());
}

// q, k, v: (B, L, E) already projected. Returns (B, Lq, E) and the per-head weights.
std::tuple<at::Tensor, at::Tensor> attend(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, int64_t heads,
                                          const std::optional<at::Tensor>& mask,
                                          std::optional<int64_t> maskType) {
  const int64_t batch = q.size(0), lq = q.size(1), lk = k.size(1), embed = q.size(2);
  TORCH_CHECK(embed % heads == 0, "mps_sim: embed_dim ", embed, " is not divisible by num_heads ",
              heads);
  const int64_t headDim = embed / heads;
  auto split = [&](const at::Tensor& t, int64_t len) {
    return t.view({batch, len, heads, headDim}).transpose(1, 2); // (B, H, L, D)
  };
  at::Tensor scores =
      at::matmul(split(q, lq), split(k, lk).transpose(-2, -1)).mul_(1.0 / std::sqrt(double(headDim)));
  if (mask && mask->defined()) {
    scores.add_(additiveMask(*mask, maskType, batch, scores));
  }
  at::Tensor weights = at::softmax(scores, -1);
  at::Tensor out = at::matmul(weights, split(v, lk)).transpose(1, 2).reshape({batch, lq, embed});
  return {out, weights};
}

at::Tensor selfAttention(const at::Tensor& x, int64_t heads, const at::Tensor& qkvWeight,
                         const at::Tensor& qkvBias, const at::Tensor& projWeight,
                         const at::Tensor& projBias, const std::optional<at::Tensor>& mask,
                         std::optional<int64_t> maskType) {
  auto qkv = at::linear(x, qkvWeight, qkvBias).chunk(3, -1);
  auto [out, weights] = attend(qkv[0], qkv[1], qkv[2], heads, mask, maskType);
  return at::linear(out, projWeight, projBias);
}

at::Tensor transformerEncoderLayer(
    const at::Tensor& src, int64_t embedDim, int64_t heads, const at::Tensor& qkvWeight,
    const at::Tensor& qkvBias, const at::Tensor& projWeight, const at::Tensor& projBias,
    bool useGelu, bool normFirst, double eps, const at::Tensor& normWeight1,
    const at::Tensor& normBias1, const at::Tensor& normWeight2, const at::Tensor& normBias2,
    const at::Tensor& ffnWeight1, const at::Tensor& ffnBias1, const at::Tensor& ffnWeight2,
    const at::Tensor& ffnBias2, const std::optional<at::Tensor>& mask,
    std::optional<int64_t> maskType) {
  const bool unbatched = src.dim() == 2;
  at::Tensor x = unbatched ? src.unsqueeze(0) : src;
  const std::vector<int64_t> normShape{embedDim};
  auto norm1 = [&](const at::Tensor& t) {
    return at::layer_norm(t, normShape, normWeight1, normBias1, eps);
  };
  auto norm2 = [&](const at::Tensor& t) {
    return at::layer_norm(t, normShape, normWeight2, normBias2, eps);
  };
  auto attention = [&](const at::Tensor& t) {
    return selfAttention(t, heads, qkvWeight, qkvBias, projWeight, projBias, mask, maskType);
  };
  auto feedForward = [&](const at::Tensor& t) {
    at::Tensor hidden = at::linear(t, ffnWeight1, ffnBias1);
    hidden = useGelu ? at::gelu(hidden) : at::relu(hidden);
    return at::linear(hidden, ffnWeight2, ffnBias2);
  };
  if (normFirst) {
    x = x + attention(norm1(x));
    x = x + feedForward(norm2(x));
  } else {
    x = norm1(x + attention(x));
    x = norm2(x + feedForward(x));
  }
  return unbatched ? x.squeeze(0) : x;
}

std::tuple<at::Tensor, at::Tensor> nativeMultiHeadAttention(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t embedDim,
    int64_t heads, const at::Tensor& qkvWeight, const at::Tensor& qkvBias,
    const at::Tensor& projWeight, const at::Tensor& projBias,
    const std::optional<at::Tensor>& mask, bool needWeights, bool averageWeights,
    std::optional<int64_t> maskType) {
  const bool unbatched = query.dim() == 2;
  auto batched = [&](const at::Tensor& t) { return unbatched ? t.unsqueeze(0) : t; };
  at::Tensor q, k, v;
  if (query.is_same(key) && key.is_same(value)) {
    auto qkv = at::linear(batched(query), qkvWeight, qkvBias).chunk(3, -1);
    q = qkv[0], k = qkv[1], v = qkv[2];
  } else {
    auto w = qkvWeight.chunk(3, 0);
    auto b = qkvBias.chunk(3, 0);
    q = at::linear(batched(query), w[0], b[0]);
    k = at::linear(batched(key), w[1], b[1]);
    v = at::linear(batched(value), w[2], b[2]);
  }
  TORCH_CHECK(q.size(-1) == embedDim, "mps_sim: query projection has ", q.size(-1),
              " features, expected embed_dim ", embedDim);
  auto [out, weights] = attend(q, k, v, heads, mask, maskType);
  out = at::linear(out, projWeight, projBias);
  if (unbatched) {
    out = out.squeeze(0);
    weights = weights.squeeze(0);
  }
  if (!needWeights) {
    return {out, at::empty({0}, out.options())};
  }
  return {out, averageWeights ? weights.mean(unbatched ? 0 : 1) : weights};
}

// scaled_dot_product_attention asks the backend which fused kernel to use; mps_sim has none,
// so it gets the math composition (sdp::SDPBackend::math == 0).
int64_t fusedSdpChoice(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const std::optional<at::Tensor>&, double, bool, std::optional<double>,
                       bool) {
  return 0;
}

} // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("_transformer_encoder_layer_fwd", TORCH_FN(transformerEncoderLayer));
  m.impl("_native_multi_head_attention", TORCH_FN(nativeMultiHeadAttention));
  m.impl("_fused_sdp_choice", TORCH_FN(fusedSdpChoice));
}

} // namespace mps_sim
