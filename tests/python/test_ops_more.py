"""Ops new users reach first (printing, randint, stable sort, equal/allclose, nan_to_num,
unique, losses, scatter_add), each vs the CPU on odd shapes: 0-size, non-contiguous, broadcast."""

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE


def to_sim(value):
    if isinstance(value, torch.Tensor):
        return value.to(DEVICE)
    return value


def same(got, expected, **tol):
    if isinstance(expected, (tuple, list)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            same(g, e, **tol)
        return
    if isinstance(expected, torch.Tensor):
        assert got.device.type == DEVICE
        assert got.dtype == expected.dtype and got.shape == expected.shape
        torch.testing.assert_close(got.cpu(), expected, **tol)
    else:
        assert got == expected


def check(fn, *inputs, **tol):
    same(fn(*[to_sim(t) for t in inputs]), fn(*inputs), **tol)


def odd_inputs():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, generator=g)
    return {
        "contiguous": base,
        "transposed": base.t(),
        "sliced": base[1:5, ::2],
        "empty": torch.randn(0, 5, generator=g),
        "scalar": torch.tensor(1.5),
    }


INPUTS = odd_inputs()


def test_print_a_tensor():
    x = torch.randn(3)
    assert str(x.to(DEVICE)) == str(x)[:-1] + ", device='mps_sim:0')"
    big = torch.randn(7, 300)  # summarized printing
    flat = lambda text: " ".join(text.replace(",\n", ", ").split())  # noqa: E731
    assert flat(repr(big.to(DEVICE))) == flat(repr(big)[:-1] + ", device='mps_sim:0')")
    assert "nan" in repr(torch.tensor([1.0, float("nan"), float("inf")], device=DEVICE))
    assert repr(torch.tensor([], device=DEVICE)).startswith("tensor([]")
    assert repr(torch.tensor([1, 2], device=DEVICE)).startswith("tensor([1, 2]")


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_masked_select(kind):
    x = INPUTS[kind]
    check(lambda t: torch.masked_select(t, t > 0), x)
    check(lambda t: torch.masked_select(t, torch.ones(t.shape[-1:] or (), dtype=torch.bool)
                                         .to(t.device)), x)  # broadcast mask


def test_randint_and_random_from():
    torch.manual_seed(7)
    expected = torch.randint(3, 10, (5, 4))
    torch.manual_seed(7)
    got = torch.randint(3, 10, (5, 4), device=DEVICE)
    assert torch.equal(got.cpu(), expected)
    torch.manual_seed(8)
    exp2 = torch.empty(6, dtype=torch.long).random_(5)
    torch.manual_seed(8)
    assert torch.equal(torch.empty(6, dtype=torch.long, device=DEVICE).random_(5).cpu(), exp2)
    assert torch.randint(0, 4, (0,), device=DEVICE).shape == (0,)


@pytest.mark.parametrize("kind", ["contiguous", "transposed", "sliced", "empty"])
def test_stable_sort(kind):
    x = (INPUTS[kind] * 2).round()  # ties, so stability matters
    check(lambda t: torch.sort(t, dim=-1, stable=True), x)
    check(lambda t: torch.sort(t, dim=0, descending=True, stable=True), x)


def test_equal_and_allclose():
    for x in INPUTS.values():
        check(lambda a, b: torch.equal(a, b), x, x.clone())
        check(lambda a, b: torch.allclose(a, b), x, x + 1e-9)
        if x.numel():
            check(lambda a, b: torch.equal(a, b), x, x + 1)
            check(lambda a, b: torch.allclose(a, b), x, x + 1)
    check(lambda a, b: torch.equal(a, b), torch.ones(2, 3), torch.ones(3, 2))


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_nan_to_num(kind):
    x = INPUTS[kind].clone()
    if x.numel():
        x[(0,) * x.dim()] = float("nan")
        if x.dim():
            x[(-1,) * x.dim()] = float("-inf")
    check(lambda t: torch.nan_to_num(t), x)
    check(lambda t: torch.nan_to_num(t, nan=2.0, posinf=1.0, neginf=-1.0), x)
    check(lambda t: t.clone().nan_to_num_(nan=0.5), x)


@pytest.mark.parametrize("kind", ["contiguous", "transposed", "sliced", "empty"])
def test_unique(kind):
    x = (INPUTS[kind] * 2).round()
    check(lambda t: torch.unique(t), x)
    check(lambda t: torch.unique(t, return_inverse=True, return_counts=True), x)
    check(lambda t: torch.unique(t, dim=0), x)
    check(lambda t: torch.unique_consecutive(t, return_counts=True), x)


def test_losses():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, generator=g)
    target = torch.randint(0, 5, (7,), generator=g)
    weight = torch.rand(5, generator=g)
    check(lambda a, t: F.nll_loss(F.log_softmax(a, -1), t), logits, target)
    check(lambda a, t, w: F.nll_loss(F.log_softmax(a, -1), t, weight=w, reduction="sum"),
          logits, target, weight)
    check(lambda a, t: F.nll_loss(a, t, ignore_index=2, reduction="none"), logits, target)
    check(lambda a, t: F.cross_entropy(a, t), logits.t().contiguous().t(), target)
    check(lambda a, b: F.mse_loss(a, b), logits, logits.flip(0))
    check(lambda a, b: F.mse_loss(a, b, reduction="none"), logits.t(), logits.t() * 2)
    check(lambda a, b: F.mse_loss(a, b, reduction="sum"), logits[:0], logits[:0])


@pytest.mark.parametrize("kind", ["contiguous", "transposed", "sliced"])
def test_scatter_add(kind):
    src = INPUTS[kind]
    index = torch.randint(0, 3, src.shape, generator=torch.Generator().manual_seed(4))
    check(lambda s, i: torch.zeros(3, src.shape[1], dtype=s.dtype, device=s.device)
          .scatter_add(0, i, s), src, index)
    check(lambda s, i: torch.ones(3, src.shape[1], device=s.device).scatter_add_(0, i, s),
          src, index)
    check(lambda s, i: torch.zeros(3, src.shape[1], device=s.device).scatter_(0, i, s),
          src, torch.arange(3).repeat(src.shape[1], 2).t()[:3].contiguous()[:, :src.shape[1]])
    check(lambda s, i: torch.zeros(2, 2, device=s.device).scatter_add(0, i, s),
          torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long))


def test_conv2d_gives_the_projects_message():
    conv = torch.nn.Conv2d(3, 4, 3).to(DEVICE)
    with pytest.raises(NotImplementedError, match="aten::convolution.*not implemented for the "
                       "mps_sim device.*tensor.cpu\\(\\)"):
        conv(torch.randn(1, 3, 8, 8, device=DEVICE))


def test_strided_copies_of_views():
    # The copies that crashed on torch 2.11 (item 1): gathers of transposed and offset views.
    x = torch.randn(4, 32, 256)
    s = x.to(DEVICE)
    same(s.view(4, 32, 4, 64).transpose(1, 2).contiguous(),
         x.view(4, 32, 4, 64).transpose(1, 2).contiguous())
    same(s.chunk(3, -1)[1].contiguous(), x.chunk(3, -1)[1].contiguous())
    same(s[:, 1:5].clone(), x[:, 1:5].clone())
    same(s[..., 3::7].clone(), x[..., 3::7].clone())
