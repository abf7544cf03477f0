"""Each op on mps_sim against the CPU: shapes, float32 and float16, non-contiguous inputs.
The sim computes with ATen's CPU kernels, so results match the CPU to rounding."""

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE

DTYPES = [torch.float32, torch.float16]


def tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def check(fn, *inputs, dtype=torch.float32):
    """fn on CPU inputs vs fn on the same inputs moved to mps_sim."""
    expected = fn(*inputs)
    got = fn(*[t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in inputs])
    if isinstance(expected, (tuple, list)):
        for e, g in zip(expected, got):
            assert g.device.type == DEVICE
            torch.testing.assert_close(g.cpu(), e, **tol(dtype))
    else:
        assert got.device.type == DEVICE
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got.cpu(), expected, **tol(dtype))


def rand(*shape, dtype=torch.float32, transposed=False):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    t = torch.randn(*shape, generator=g).to(dtype)
    return t.t() if transposed else t


ELEMENTWISE = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 1), "add_scalar": lambda a, b: a * 0.5 + 2,
    "maximum": torch.maximum, "where": lambda a, b: torch.where(a > b, a, b),
    "inplace_add": lambda a, b: a.clone().add_(b), "relu": lambda a, b: F.relu(a),
    "gelu": lambda a, b: F.gelu(a), "tanh": lambda a, b: torch.tanh(a),
    "exp": lambda a, b: torch.exp(a.clamp(max=4)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_elementwise(name, dtype, transposed):
    check(ELEMENTWISE[name], rand(16, 24, dtype=dtype, transposed=transposed),
          rand(16, 24, dtype=dtype, transposed=transposed).mul(0.5), dtype=dtype)


REDUCTIONS = {
    "sum": lambda a: a.sum(), "sum_dim": lambda a: a.sum(dim=1), "mean": lambda a: a.mean(),
    "mean_dim": lambda a: a.mean(dim=0, keepdim=True), "max": lambda a: a.max(),
    "max_dim": lambda a: a.max(dim=1), "softmax": lambda a: torch.softmax(a, dim=-1),
    "log_softmax": lambda a: torch.log_softmax(a, dim=0),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_reductions_and_softmax(name, dtype, transposed):
    check(REDUCTIONS[name], rand(12, 20, dtype=dtype, transposed=transposed), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_matmuls(dtype, transposed):
    a = rand(8, 16, dtype=dtype, transposed=transposed)  # 8x16 or 16x8
    b = rand(a.shape[1], 5, dtype=dtype)
    check(torch.mm, a, b, dtype=dtype)
    check(torch.matmul, a, b, dtype=dtype)
    check(lambda x, y, c: torch.addmm(c, x, y), a, b, rand(5, dtype=dtype), dtype=dtype)
    check(torch.bmm, rand(3, 4, 6, dtype=dtype), rand(3, 6, 2, dtype=dtype), dtype=dtype)
    check(torch.matmul, rand(2, 3, 4, 6, dtype=dtype), rand(6, 2, dtype=dtype), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm(dtype):
    x = rand(4, 10, 32, dtype=dtype)
    w, b = rand(32, dtype=dtype), rand(32, dtype=dtype)
    check(lambda x, w, b: F.layer_norm(x, (32,), w, b), x, w, b, dtype=dtype)
    check(lambda x: F.layer_norm(x, (32,)), x.transpose(0, 1), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nn_modules(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16).to(dtype).eval()
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8),
                              torch.nn.ReLU()).to(dtype).eval()
    x = rand(4, 32, dtype=dtype)
    with torch.no_grad():
        for model in (linear, mlp):
            expected = model(x)
            got = model.to(DEVICE)(x.to(DEVICE))
            torch.testing.assert_close(got.cpu(), expected, **tol(dtype))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer(norm_first, activation):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True,
                                             norm_first=norm_first, activation=activation).eval()
    x = rand(2, 7, 32)
    with torch.no_grad():
        expected = layer(x)
        got = layer.to(DEVICE)(x.to(DEVICE))
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


def test_transformer_layer_with_padding_mask_and_mha():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = rand(2, 5, 32)
    mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    with torch.no_grad():
        expected = layer(x, src_key_padding_mask=mask)
        got = layer.to(DEVICE)(x.to(DEVICE), src_key_padding_mask=mask.to(DEVICE))
        torch.testing.assert_close(got.cpu()[0], expected[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.cpu()[1, :3], expected[1, :3], atol=1e-4, rtol=1e-4)
        e_out, e_w = mha(x, x, x)
        g_out, g_w = mha.to(DEVICE)(*(x.to(DEVICE),) * 3)
        torch.testing.assert_close(g_out.cpu(), e_out, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g_w.cpu(), e_w, atol=1e-4, rtol=1e-4)


def test_factories():
    assert torch.zeros(3, 4, device=DEVICE).cpu().eq(0).all()
    assert torch.ones(5, device=DEVICE, dtype=torch.float16).cpu().eq(1).all()
    assert torch.full((2, 2), 7.0, device=DEVICE).cpu().eq(7).all()
    torch.testing.assert_close(torch.arange(2, 11, 3, device=DEVICE).cpu(), torch.arange(2, 11, 3))
    torch.testing.assert_close(torch.linspace(0, 1, 7, device=DEVICE).cpu(), torch.linspace(0, 1, 7))
    torch.manual_seed(3)
    r = torch.randn(1000, device=DEVICE).cpu()
    assert r.shape == (1000,) and 0.8 < r.std().item() < 1.2 and abs(r.mean().item()) < 0.2
    assert torch.empty(2, 3, device=DEVICE).shape == (2, 3)
    x = torch.empty(4, device=DEVICE).fill_(2.5)
    assert x.cpu().eq(2.5).all() and x.sum().item() == 10.0


def test_views_and_contiguous():
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    views = {
        "view": lambda t: t.view(12, 5), "reshape": lambda t: t.reshape(-1),
        "transpose": lambda t: t.transpose(0, 2), "permute": lambda t: t.permute(2, 0, 1),
        "slice": lambda t: t[:, 1:3, ::2], "select": lambda t: t[1], "unsqueeze": lambda t: t.unsqueeze(1),
        "as_strided": lambda t: t.as_strided((3, 3), (5, 1), 2), "narrow": lambda t: t.narrow(2, 1, 3),
        "expand": lambda t: t[:, :1].expand(3, 4, 5), "t_contiguous": lambda t: t[0].t().contiguous(),
    }
    dev = base.to(DEVICE)
    for name, fn in views.items():
        expected, got = fn(base), fn(dev)
        assert got.shape == expected.shape and got.stride() == expected.stride(), name
        torch.testing.assert_close(got.cpu(), expected, msg=name)
        torch.testing.assert_close(got.contiguous().cpu(), expected.contiguous(), msg=name)
    # writes through a view reach the base
    dev[:, 0, 0] = -1
    assert dev.cpu()[:, 0, 0].eq(-1).all()


def test_copies_blocking_and_non_blocking():
    x = rand(64, 32)
    for non_blocking in (False, True):
        d = x.to(DEVICE, non_blocking=non_blocking)
        back = torch.empty_like(x)
        back.copy_(d * 2, non_blocking=non_blocking)
        torch.mps_sim.synchronize()
        torch.testing.assert_close(back, x * 2)
    # a non_blocking upload snapshots the source: changing it afterwards changes nothing
    src = x.clone()
    d = src.to(DEVICE, non_blocking=True)
    src.zero_()
    torch.testing.assert_close(d.cpu(), x)
    # dtype conversion and strided destination
    h = x.to(DEVICE).to(torch.float16)
    torch.testing.assert_close(h.cpu(), x.half())
    target = torch.zeros(32, 64, device=DEVICE)
    target.t().copy_(x.to(DEVICE))
    torch.testing.assert_close(target.cpu(), x.t())


def test_cat_nonzero_item():
    a, b = rand(2, 3), rand(4, 3)
    check(lambda a, b: torch.cat([a, b]), a, b)
    check(lambda a, b: torch.cat([a.t(), b.t()], dim=1), a, b)
    m = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
    torch.testing.assert_close(torch.nonzero(m.to(DEVICE)).cpu(), torch.nonzero(m))
    assert m.to(DEVICE).sum().item() == 6.0


def test_indexing_with_indices_and_masks():
    x = torch.arange(12.0).view(3, 4)
    d = x.to(DEVICE)
    mask = x > 4
    torch.testing.assert_close(d[mask.to(DEVICE)].cpu(), x[mask])
    torch.testing.assert_close(d[:, torch.tensor([True, False, True, False], device=DEVICE)].cpu(),
                               x[:, torch.tensor([True, False, True, False])])
    torch.testing.assert_close(d[torch.tensor([2, 0], device=DEVICE)].cpu(), x[torch.tensor([2, 0])])
    d2, x2 = d.clone(), x.clone()
    d2[mask.to(DEVICE)] = -1.0
    x2[mask] = -1.0
    torch.testing.assert_close(d2.cpu(), x2)
    d3, x3 = d.clone(), x.clone()
    d3[torch.tensor([0, 2], device=DEVICE)] = torch.ones(2, 4, device=DEVICE)
    x3[torch.tensor([0, 2])] = torch.ones(2, 4)
    torch.testing.assert_close(d3.cpu(), x3)
