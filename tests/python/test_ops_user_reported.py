"""Ops users reported as missing (floor_divide, unfold, view_as_real, mm/sum/cumsum/clamp with
out=), each vs the CPU: odd shapes, non-contiguous inputs and outputs, out= that must be
resized, in-place forms. The computing ops run through the generic kernel (stream, tracker);
the views share storage with their base like any mps_sim view."""

import pytest
import torch

from conftest import DEVICE


def odd_pair(dtype=torch.float32):
    g = torch.Generator().manual_seed(11)
    if dtype.is_floating_point:
        a = torch.randn(7, 5, generator=g, dtype=dtype) * 10
        b = torch.randn(5, 7, generator=g, dtype=dtype).t() * 3 + 0.25  # non-contiguous
    else:
        a = torch.randint(-50, 50, (7, 5), generator=g, dtype=dtype)
        b = torch.randint(1, 9, (5, 7), generator=g, dtype=dtype).t()
        b = torch.where(torch.arange(35).reshape(7, 5) % 2 == 0, b, -b)  # signs of both kinds
    return a, b


def assert_same(got, expected):
    assert got.device.type == DEVICE
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_floor_divide_matches_cpu(dtype):
    a, b = odd_pair(dtype)
    sa, sb = a.to(DEVICE), b.to(DEVICE)
    assert_same(torch.floor_divide(sa, sb), torch.floor_divide(a, b))
    assert_same(sa // sb, a // b)
    assert_same(sa[::2, 1:] // sb[::2, 1:], a[::2, 1:] // b[::2, 1:])  # strided views
    assert_same(sa // 3, a // 3)  # a Python scalar
    assert_same(sa // sb[0], a // b[0])  # broadcast
    inplace = sa.clone()
    inplace //= sb
    assert_same(inplace, a // b)
    out = torch.empty(0, dtype=dtype, device=DEVICE)  # resized by the op
    torch.floor_divide(sa, sb, out=out)
    assert_same(out, a // b)


def test_unfold_is_a_view_that_matches_cpu():
    base = torch.arange(2 * 9 * 4, dtype=torch.float32).reshape(2, 9, 4)
    sim = base.to(DEVICE)
    for dim, size, step in [(1, 3, 2), (1, 9, 1), (2, 1, 3), (0, 2, 1), (-1, 2, 2)]:
        got, expected = sim.unfold(dim, size, step), base.unfold(dim, size, step)
        assert got.stride() == expected.stride()
        assert_same(got, expected)
    t = sim.transpose(0, 2)  # non-contiguous input
    assert_same(t.unfold(1, 4, 3), base.transpose(0, 2).unfold(1, 4, 3))
    # A view: its storage is its base's, and computing on it goes through the device.
    window = sim.unfold(1, 3, 2)
    assert window.untyped_storage().data_ptr() == sim.untyped_storage().data_ptr()
    assert_same(window.sum(-1) * 2, base.unfold(1, 3, 2).sum(-1) * 2)
    sim[0, 0, 0] = 100.0
    assert window[0, 0, 0, 0].item() == 100.0
    with pytest.raises(RuntimeError, match="(?i)size"):
        sim.unfold(1, 20, 1)


def test_view_as_real_and_back_match_cpu():
    g = torch.Generator().manual_seed(5)
    z = torch.complex(torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g))
    sz = z.to(DEVICE)
    real = torch.view_as_real(sz)
    assert_same(real, torch.view_as_real(z))
    assert_same(torch.view_as_real(sz[:, 1::2]), torch.view_as_real(z[:, 1::2]))  # strided
    assert_same(real[..., 0] * 2 + real[..., 1], z.real * 2 + z.imag)
    real.mul_(-1)  # writes through to the complex tensor
    assert torch.equal(sz.cpu(), -z)
    back = torch.view_as_complex(torch.view_as_real(sz))
    assert back.dtype == torch.complex64 and torch.equal(back.cpu(), -z)
    with pytest.raises(RuntimeError, match="(?i)complex"):
        torch.view_as_real(torch.ones(3, device=DEVICE))


@pytest.mark.parametrize("out_kind", ["resized", "exact", "non_contiguous"])
def test_out_variants_match_cpu(out_kind):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(5, 7, generator=g)
    b = torch.randn(3, 7, generator=g).t()  # non-contiguous 7x3
    lo, hi = -torch.rand(5, 7, generator=g), torch.rand(5, 7, generator=g)
    cases = {
        "mm": (lambda x, y, out: torch.mm(x, y, out=out), (a, b), (5, 3)),
        "sum": (lambda x, out: torch.sum(x, 1, out=out), (a,), (5,)),
        "sum_keepdim": (lambda x, out: torch.sum(x, (0, 1), keepdim=True, out=out), (a,), (1, 1)),
        "cumsum": (lambda x, out: torch.cumsum(x.t(), 0, out=out), (a,), (7, 5)),
        "clamp_tensor": (lambda x, l, h, out: torch.clamp(x, l, h, out=out), (a, lo, hi), (5, 7)),
        "clamp_min_tensor": (lambda x, l, out: torch.clamp(x, min=l, out=out), (a, lo), (5, 7)),
        "clamp_scalar": (lambda x, out: torch.clamp(x, -0.5, 0.25, out=out), (a,), (5, 7)),
    }
    for name, (fn, inputs, shape) in cases.items():
        expected = fn(*inputs, out=torch.empty(shape))
        if out_kind == "resized":
            out = torch.empty(0, device=DEVICE)
        elif out_kind == "exact":
            out = torch.full(shape, float("nan"), device=DEVICE)
        else:  # a transposed buffer: the result is written through its strides
            out = torch.full(tuple(reversed(shape)), float("nan"), device=DEVICE).t()
        returned = fn(*[t.to(DEVICE) for t in inputs], out=out)
        assert returned is out, name
        assert_same(out, expected)


def test_functional_and_inplace_forms_of_clamp_with_tensors_and_cumsum():
    g = torch.Generator().manual_seed(9)
    a = torch.randn(4, 6, generator=g).t()  # non-contiguous
    lo, hi = -torch.rand(6, 1, generator=g), torch.rand(1, 4, generator=g)  # broadcast bounds
    sa, slo, shi = a.to(DEVICE), lo.to(DEVICE), hi.to(DEVICE)
    assert_same(torch.clamp(sa, slo, shi), torch.clamp(a, lo, hi))
    assert_same(torch.clamp(sa, max=shi), torch.clamp(a, max=hi))
    inplace = sa.clone()
    inplace.clamp_(slo, shi)
    assert_same(inplace, torch.clamp(a, lo, hi))
    c = sa.clone()
    c.cumsum_(1)
    assert_same(c, a.cumsum(1))
    assert_same(sa.cumsum(0, dtype=torch.float64), a.cumsum(0, dtype=torch.float64))


def test_the_reported_ops_are_listed_as_implemented():
    implemented = set(torch.mps_sim.implemented_ops())
    for name in ["aten::floor_divide", "aten::floor_divide.out", "aten::unfold",
                 "aten::view_as_real", "aten::mm.out", "aten::sum.IntList_out",
                 "aten::cumsum.out", "aten::clamp.Tensor_out"]:
        assert name in implemented, name
