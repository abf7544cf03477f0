"""The torch.mps_sim API: what the patched torch.mps offers, and the package's own knobs."""

import threading

import pytest
import torch

from conftest import DEVICE, drain_all_streams, run_python


def test_device_is_registered():
    assert torch.mps_sim.is_available()
    assert torch.mps_sim.device_count() == 1
    x = torch.zeros(2, device=DEVICE)
    assert x.device.type == DEVICE and x.is_mps_sim


def test_set_threadsafe_round_trips():
    torch.mps_sim.set_threadsafe(True)
    assert torch.mps_sim.is_threadsafe()
    assert torch.mps_sim.threadsafe_stats()["threadsafe"] is True
    torch.mps_sim.set_threadsafe(False)
    assert not torch.mps_sim.is_threadsafe()


def test_env_turns_threadsafe_on_at_import():
    proc = run_python("""
        import torch, mps_threadsafe
        print(torch.mps_sim.is_threadsafe())
    """, env={"MPS_SIM_THREADSAFE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_stats_has_runtime_stream_and_domain_counters():
    torch.mps_sim.set_threadsafe(True)
    x = torch.randn(8, 16, device=DEVICE)
    torch.nn.functional.layer_norm(x, (16,)).cpu()
    stats = torch.mps_sim.threadsafe_stats()
    for key in ("contract_violations", "deferred_frees", "threads_bound", "max_active_streams",
                "streams", "domains", "protections", "sim", "allocator"):
        assert key in stats
    stream = stats["streams"][0]
    for key in ("id", "dispatches", "ops_encoded", "encoders_created", "commits",
                "cross_stream_waits", "submitted_batch", "completed_batch"):
        assert key in stream
    assert "layer_norm" in {d["name"] for d in stats["domains"]}


def test_set_threadsafe_with_work_in_flight_raises():
    torch.mps_sim.set_threadsafe(True)
    x = torch.randn(64, 64, device=DEVICE)
    x.cpu()
    encoded = threading.Event()
    release = threading.Event()

    def worker():
        y = x @ x  # encoded on the worker's own stream, not committed (COMMIT_ADAPTIVE)
        encoded.set()
        release.wait(30)
        y.cpu()

    t = threading.Thread(target=worker)
    t.start()
    assert encoded.wait(30)
    try:
        with pytest.raises(RuntimeError, match="(?i)work|flight|commit"):
            torch.mps_sim.set_threadsafe(False)
        assert torch.mps_sim.is_threadsafe()
        assert isinstance(torch.mps_sim.WorkInFlightError("x"), RuntimeError)
    finally:
        release.set()
        t.join()
    torch.mps_sim.set_threadsafe(False)  # nothing in flight any more
    assert not torch.mps_sim.is_threadsafe()


def test_protections_can_be_switched_and_read():
    torch.mps_sim.set_protections(False, domains=True)
    p = torch.mps_sim.protections()
    assert p == {"serial_queue": False, "domains": True, "cross_stream_order": False,
                 "deferred_frees": False}
    torch.mps_sim.set_protections(True)
    assert all(torch.mps_sim.protections().values())


def test_unknown_violation_policy_is_a_value_error():
    with pytest.raises(ValueError, match="abort"):
        torch.mps_sim.set_violation_policy("explode")


def test_implemented_ops_lists_the_models_ops():
    ops = set(torch.mps_sim.implemented_ops())
    for op in ("aten::addmm", "aten::native_layer_norm", "aten::_softmax", "aten::_copy_from",
               "aten::cat", "aten::nonzero", "aten::_transformer_encoder_layer_fwd"):
        assert op in ops


def test_empty_cache_returns_every_free_list_to_the_host():
    # Note [Emptying the cache] (python/csrc/allocator.cpp): a block whose only user is a
    # stream still running it goes to that stream's own free list; once the stream is done,
    # empty_cache must return it to the host like any other cached block.
    drain_all_streams()
    torch.mps_sim.empty_cache()
    base = torch.mps_sim.threadsafe_stats()["allocator"]
    assert base["cached_bytes"] == 0 and base["pending_frees"] == 0, base
    s = torch.mps_sim.Stream()
    with torch.mps_sim.stream(s):
        x = torch.ones(1000, device=DEVICE)
        y = x + 1
        del x  # pending: its use on `s` has not run
        z = torch.ones(3000, device=DEVICE)  # moves x's block to `s`'s own free list
    s.synchronize()
    cached = torch.mps_sim.threadsafe_stats()["allocator"]
    assert cached["cached_bytes"] >= 4096, cached  # x's block, in `s`'s list
    torch.mps_sim.empty_cache()
    after = torch.mps_sim.threadsafe_stats()["allocator"]
    assert after["cached_bytes"] == 0, after
    assert after["host_frees"] > cached["host_frees"]
    assert after["allocated_bytes"] == cached["allocated_bytes"]  # y and z untouched
    assert y.cpu().eq(2).all() and z.cpu().eq(1).all()


def test_empty_cache_keeps_blocks_a_stream_may_still_read():
    drain_all_streams()
    torch.mps_sim.empty_cache()
    s = torch.mps_sim.Stream()
    with torch.mps_sim.stream(s):
        x = torch.arange(1000, dtype=torch.float32, device=DEVICE)
        s.synchronize()
        y = x * 3  # left open on `s`
        del x
        z = torch.ones(3000, device=DEVICE)  # x's block goes to `s`'s list, still in use
    torch.mps_sim.empty_cache()  # must not free it under the pending read
    assert torch.mps_sim.threadsafe_stats()["allocator"]["cached_bytes"] >= 4096
    torch.testing.assert_close(y.cpu(), torch.arange(1000, dtype=torch.float32) * 3)
    s.synchronize()
    torch.mps_sim.empty_cache()
    assert torch.mps_sim.threadsafe_stats()["allocator"]["cached_bytes"] == 0
    del z
