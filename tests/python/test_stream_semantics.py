"""Stream contexts are per thread (issue 8 item 7): one Stream object serves every thread for
its id, so what a `with` block saves must not live on the object."""

import threading

import pytest
import torch

from conftest import DEVICE


def test_stream_context_of_one_object_is_per_thread():
    # Issue 8 item 7. One Stream object exists per id, so both threads enter the SAME object.
    # Forced interleaving: A enters, B enters, A exits, B exits. Before the fix A's exit ran
    # B's saved context and B's exit found nothing to restore: B stayed pinned to stream 0.
    torch.mps_sim.set_threadsafe(True)
    shared = torch.mps_sim.default_stream()
    step = threading.Barrier(2)
    seen = {}
    errors = []

    def thread_a():
        try:
            with shared:
                step.wait(30)  # 1: A inside
                step.wait(30)  # 2: B inside
            step.wait(30)  # 3: A left
            step.wait(30)  # 4: B left
            seen["a"] = torch.mps_sim._C.explicit_stream_id()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def thread_b():
        try:
            step.wait(30)  # 1
            with shared:
                assert torch.mps_sim.current_stream().stream_id == 0
                step.wait(30)  # 2
                step.wait(30)  # 3: A has left; B must still be on stream 0
                seen["b_inside"] = torch.mps_sim.current_stream().stream_id
            step.wait(30)  # 4
            seen["b"] = torch.mps_sim._C.explicit_stream_id()
            torch.zeros(1, device=DEVICE).cpu()
            seen["b_after"] = torch.mps_sim.current_stream().stream_id
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert seen["b_inside"] == 0
    assert seen["a"] == -1 and seen["b"] == -1  # both back under the thread policy
    assert seen["b_after"] != 0  # B got its own pool stream, not the pinned default stream


def test_nested_contexts_of_one_stream_object_restore_in_order():
    s = torch.mps_sim.Stream()
    with s:
        with torch.mps_sim.default_stream():
            with s:
                assert torch.mps_sim.current_stream() == s
            assert torch.mps_sim.current_stream().stream_id == 0
        assert torch.mps_sim.current_stream() == s
    assert torch.mps_sim._C.explicit_stream_id() == -1
