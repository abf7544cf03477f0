"""Autograd on mps_sim (the registered PrivateUse1 hooks let the engine run backward on the
device): per-thread models and one shared model accumulating .grad, from 8 threads, vs CPU."""

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, sim_stats
from test_threads import run_in_threads


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                               torch.nn.Linear(32, 5))


def batch(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(6, 16, generator=g), torch.randint(0, 5, (6,), generator=g)


def loss_of(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits, y) + F.mse_loss(logits, torch.zeros_like(logits))


def grads(model):
    return [p.grad.detach().cpu() for p in model.parameters()]


def test_backward_matches_cpu():
    x, y = batch(0)
    cpu = make_model()
    loss_of(cpu, x, y).backward()
    sim = make_model().to(DEVICE)
    loss = loss_of(sim, x.to(DEVICE), y.to(DEVICE))
    loss.backward()
    for g_sim, g_cpu in zip(grads(sim), grads(cpu)):
        torch.testing.assert_close(g_sim, g_cpu, atol=1e-5, rtol=1e-5)


def test_gather_backward_uses_scatter_add():
    src = torch.randn(4, 6)
    index = torch.tensor([[0, 1, 1], [2, 2, 5], [3, 0, 0], [1, 1, 1]])
    cpu = src.clone().requires_grad_()
    torch.gather(cpu, 1, index).pow(2).sum().backward()
    sim = src.to(DEVICE).requires_grad_()
    torch.gather(sim, 1, index.to(DEVICE)).pow(2).sum().backward()
    torch.testing.assert_close(sim.grad.cpu(), cpu.grad)


def test_per_thread_models_backward_from_8_threads():
    torch.mps_sim.set_threadsafe(True)
    expected = []
    for i in range(8):
        m = make_model(i)
        loss_of(m, *batch(i)).backward()
        expected.append(grads(m))
    got = [None] * 8
    models = [make_model(i).to(DEVICE) for i in range(8)]

    def work(i):
        x, y = batch(i)
        loss_of(models[i], x.to(DEVICE), y.to(DEVICE)).backward()
        got[i] = grads(models[i])

    assert run_in_threads(8, work) == []
    assert sim_stats()["max_active_streams"] > 1  # the forwards ran on streams at once
    for g_sim, g_cpu in zip(got, expected):
        for a, b in zip(g_sim, g_cpu):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shared_model_accumulates_grad_from_8_threads():
    torch.mps_sim.set_threadsafe(True)
    cpu = make_model()
    for i in range(8):
        loss_of(cpu, *batch(i)).backward()
    sim = make_model().to(DEVICE)

    def work(i):
        x, y = batch(i)
        loss_of(sim, x.to(DEVICE), y.to(DEVICE)).backward()

    assert run_in_threads(8, work) == []
    torch.mps_sim.synchronize()
    for a, b in zip(grads(sim), grads(cpu)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # summation order differs


def test_non_blocking_copy_to_host_memory():
    x = torch.randn(64, 33)
    y = (x.to(DEVICE) * 3).to("cpu", non_blocking=True)
    # Whether ATen's _to_copy pins the host destination of a non-blocking copy from a
    # PrivateUse1 device is torch's choice, not ours: torch 2.13 does (through our hooks'
    # pinned allocator), torch 2.11 does not (seen on the device machine). Either way the values
    # must be right once the device is synchronized.
    if torch.__version__ >= "2.13":
        assert y.is_pinned()
    torch.mps_sim.synchronize()
    torch.testing.assert_close(y, x * 3)


def test_pin_memory_and_views_of_pinned_memory():
    x = torch.randn(10, 10)
    pinned = x.pin_memory()
    assert pinned.is_pinned() and not x.is_pinned()
    assert pinned[3:, 2:].is_pinned()  # any address inside the block
    assert torch.equal(pinned, x)
    assert torch.equal(pinned.to(DEVICE, non_blocking=True).cpu(), x)


def test_storage_resize():
    x = torch.arange(6.0, device=DEVICE)
    storage = x.untyped_storage()
    storage.resize_(10 * 4)
    assert storage.nbytes() == 40
    assert torch.equal(torch.tensor([], device=DEVICE).set_(storage).cpu()[:6], torch.arange(6.0))
