"""Regression tests of issue 8 on mps_sim: cross-thread data, GPU errors and device
synchronize after join(). Each one makes its interleaving certain (a test barrier inside the
runtime, or threads parked where the issue's threads would be), never likely."""

import queue
import threading

import pytest
import torch

import mps_threadsafe._C as _C
from conftest import DEVICE


def test_disjoint_row_writes_from_8_threads_all_land():
    # issue 8.1: each thread fills its own row of one preallocated tensor.
    torch.mps_sim.set_threadsafe(True)
    base = torch.zeros(8, 4096, device=DEVICE)
    torch.mps_sim.synchronize()
    done = threading.Barrier(9)
    release = threading.Event()
    errors = []

    def work(i):
        try:
            base[i].add_(i + 1.0)
        except BaseException as e:  # counted, never swallowed
            errors.append(repr(e))
        done.wait()
        release.wait()  # alive: its stream is not given back, its batch stays open

    # All 8 writers read the buffer's history before any of them goes on.
    _C._set_test_barrier("buffer_uses_before_waits", 8)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        done.wait(timeout=60)
    finally:
        _C._clear_test_hook()
    result = base.cpu()
    release.set()
    for t in threads:
        t.join(60)
    assert not errors
    assert torch.equal(result[:, 0], torch.arange(1.0, 9.0))
    assert torch.equal(result, torch.arange(1.0, 9.0).unsqueeze(1).expand(8, 4096))


def test_gpu_error_reaches_the_reader_on_another_thread():
    # issue 8.2: A's kernel fails; B, on its own stream, reads what A produced in that batch.
    torch.mps_sim.set_threadsafe(True)
    handoff = queue.Queue()
    b_done = threading.Event()
    outcome = {}

    def producer():
        x = torch.ones(4, 8, device=DEVICE)
        idx = torch.tensor([100], device=DEVICE)
        try:
            handoff.put(x.index_select(0, idx) * 2)  # fails on the GPU, later
        except RuntimeError as e:
            outcome["a_encode"] = str(e)
            handoff.put(None)
        b_done.wait(60)  # alive: B gets a stream of its own, A's is not given back
        try:
            torch.mps_sim.synchronize()
        except RuntimeError as e:
            outcome["a_sync"] = str(e)

    def reader():
        try:
            y = handoff.get(timeout=60)
            if y is not None:
                outcome["b_value"] = y.cpu()
        except RuntimeError as e:
            outcome["b"] = str(e)
        finally:
            b_done.set()

    a = threading.Thread(target=producer)
    b = threading.Thread(target=reader)
    a.start()
    b.start()
    a.join(60)
    b.join(60)
    assert "a_encode" not in outcome, outcome["a_encode"]
    assert "b_value" not in outcome, f"silent garbage: {outcome.get('b_value')}"
    assert "index out of range" in outcome["b"]
    assert "stream" in outcome["b"]
    # The owner is told too; seeing it on B did not take it from A.
    assert "index out of range" in outcome["a_sync"]
    # And nobody else: an unrelated synchronize afterwards is clean.
    torch.mps_sim.synchronize()


def test_synchronize_after_a_thread_finished_covers_its_work():
    # issue 8.4: the thread is done with the device but its stream is not given back yet.
    torch.mps_sim.set_threadsafe(True)
    x = torch.zeros(1024, device=DEVICE)
    torch.mps_sim.synchronize()
    finished = threading.Event()
    release = threading.Event()
    stream_id = {}

    def work():
        x.add_(1.0)
        stream_id["id"] = _C.current_stream_id()
        finished.set()
        release.wait()  # as if parked before its thread_local destructors run

    t = threading.Thread(target=work)
    t.start()
    finished.wait(60)
    torch.mps_sim.synchronize()
    streams = {s["id"]: s for s in _C.stats()["streams"]}
    release.set()
    t.join(60)
    s = streams[stream_id["id"]]
    assert s["submitted_batch"] >= 1
    assert s["completed_batch"] == s["submitted_batch"]
