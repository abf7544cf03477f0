"""The caller's dispatch state (inference_mode, no_grad, autocast) reaches the kernels, which
run on the sim GPU thread (Note [The caller's thread-local state] in python/csrc/encode.cpp)."""

import torch

from conftest import DEVICE, sim_stats
from test_threads import run_in_threads


def test_inference_mode_round_trip():
    with torch.inference_mode():
        x = torch.ones(3).to(DEVICE)
        y = (x * 2 + 1).cpu()
        assert x.is_inference() and y.is_inference()
    assert y.tolist() == [3.0, 3.0, 3.0]


def test_inference_mode_inplace_and_views():
    with torch.inference_mode():
        x = torch.arange(12.0).reshape(3, 4).to(DEVICE)
        x.add_(1)
        x[:, 1:3].mul_(2)
        expected = torch.arange(12.0).reshape(3, 4) + 1
        expected[:, 1:3] *= 2
        assert torch.equal(x.cpu(), expected)
        assert x.t().contiguous().cpu().equal(expected.t().contiguous())


def test_no_grad_results_carry_no_history():
    w = torch.randn(4, 4, device=DEVICE, requires_grad=True)
    with torch.no_grad():
        y = w @ w
    assert not y.requires_grad
    z = w @ w
    assert z.requires_grad
    torch.testing.assert_close(y.cpu(), z.detach().cpu())


def test_model_forward_from_8_threads_under_inference_mode_matches_cpu():
    torch.mps_sim.set_threadsafe(True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.LayerNorm(64),
                                torch.nn.Linear(64, 8)).eval()
    inputs = [torch.randn(5, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    sim_model = model.to(DEVICE)
    results = [None] * 8

    def work(i):
        with torch.inference_mode():
            for _ in range(3):
                results[i] = sim_model(inputs[i].to(DEVICE)).cpu()

    assert run_in_threads(8, work) == []
    for got, exp in zip(results, expected):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)
    assert sim_stats()["max_active_streams"] > 1


def test_autocast_region_runs_and_matches_cpu_autocast_dtype():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = (a.to(DEVICE) @ b.to(DEVICE))
        got_host = got.cpu()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = a @ b
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got_host, expected, atol=2e-2, rtol=2e-2)
