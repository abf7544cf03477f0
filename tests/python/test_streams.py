"""Streams and events: the torch.mps_sim API over the runtime's streams and timeline events."""

import threading

import pytest
import torch

from conftest import DEVICE


def test_current_and_default_stream_follow_the_thread_policy():
    assert torch.mps_sim.current_stream().stream_id == 0  # threadsafe off: the default stream
    assert torch.mps_sim.default_stream().stream_id == 0
    torch.mps_sim.set_threadsafe(True)
    ids = []
    all_bound = threading.Barrier(4)

    def worker():
        torch.zeros(1, device=DEVICE).cpu()
        ids.append(torch.mps_sim.current_stream().stream_id)
        all_bound.wait(30)  # keep every binding alive until all threads have one

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 4 and 0 not in ids  # one pool stream per thread


def test_stream_context_restores_the_policy():
    s = torch.mps_sim.Stream()
    assert 1 <= s.stream_id <= 32
    with torch.mps_sim.stream(s):
        assert torch.mps_sim.current_stream() == s
        x = torch.ones(8, device=DEVICE) * 3
    assert torch.mps_sim.current_stream().stream_id == 0
    torch.mps_sim.set_stream(s)
    assert torch.mps_sim.current_stream() == s
    torch.mps_sim.set_stream(None)
    assert torch.mps_sim.current_stream().stream_id == 0  # the policy's choice again
    assert x.cpu().eq(3).all()


def test_torch_stream_guard_goes_through_the_device_guard():
    s = torch.mps_sim.Stream()
    with torch.StreamContext(s) if hasattr(torch, "StreamContext") else s:
        assert torch.mps_sim.current_stream().stream_id == s.stream_id
    assert torch.mps_sim.current_stream().stream_id == 0


def test_event_record_wait_query_synchronize():
    producer, consumer = torch.mps_sim.Stream(), torch.mps_sim.Stream()
    with torch.mps_sim.stream(producer):
        x = torch.randn(256, 256, device=DEVICE)
        y = x @ x
        event = torch.mps_sim.Event()
        event.record()
    event.wait(consumer)
    with torch.mps_sim.stream(consumer):
        z = y + 1
    event.synchronize()
    assert event.query()
    consumer.synchronize()
    assert consumer.query()
    torch.testing.assert_close(z.cpu(), x.cpu() @ x.cpu() + 1, atol=1e-3, rtol=1e-4)


def test_wait_stream_orders_work_between_streams():
    a, b = torch.mps_sim.Stream(), torch.mps_sim.Stream()
    with torch.mps_sim.stream(a):
        x = torch.full((512, 512), 2.0, device=DEVICE)
        y = (x @ x).sum()
    b.wait_stream(a)
    with torch.mps_sim.stream(b):
        z = y * 2
    assert z.item() == 2 * 512 * 512 * 4 * 512


def test_cross_stream_use_is_ordered_without_explicit_sync():
    a, b = torch.mps_sim.Stream(), torch.mps_sim.Stream()
    before = torch.mps_sim.threadsafe_stats()
    with torch.mps_sim.stream(a):
        x = torch.arange(10000, dtype=torch.float32, device=DEVICE) * 3
    with torch.mps_sim.stream(b):  # no event, no wait: useBuffers orders the read
        y = x + 1
    torch.testing.assert_close(y.cpu(), torch.arange(10000, dtype=torch.float32) * 3 + 1)
    waits = sum(s["cross_stream_waits"] for s in torch.mps_sim.threadsafe_stats()["streams"])
    assert waits > sum(s["cross_stream_waits"] for s in before["streams"])


def free_while_another_stream_reads(reuse_size=4096):
    """Frees a tensor whose read on another stream has been encoded but not run yet (that
    stream's batch is left open, so the read is held back deterministically), then asks the
    allocator for a block of the same size on the caller's stream and overwrites it at once.
    Returns (the reader's result, the freed block's address, the new block's address, the
    allocator counters before and after the free)."""
    reader = torch.mps_sim.Stream()
    x = torch.arange(reuse_size, dtype=torch.float32).to(DEVICE)  # the caller's stream
    freed_address = x.data_ptr()
    with torch.mps_sim.stream(reader):
        y = x * 2  # encoded on `reader`, not committed: the read has not run
    x.record_stream(reader)
    assert not reader.query(), "the reader's batch must still be pending for this test"
    before = torch.mps_sim.threadsafe_stats()
    del x
    after = torch.mps_sim.threadsafe_stats()
    z = torch.empty(reuse_size, dtype=torch.float32, device=DEVICE)
    new_address = z.data_ptr()
    z.fill_(-1.0)
    z.cpu()  # runs the overwrite now, before the reader's batch
    reader.synchronize()
    return y.cpu(), freed_address, new_address, before, after


def test_record_stream_defers_reuse():
    y, freed_address, new_address, before, after = free_while_another_stream_reads()
    # The reader saw the values it was given, not the next owner's.
    assert torch.equal(y, torch.arange(4096, dtype=torch.float32) * 2)
    # The block was parked, counted as a deferred free, and not handed out.
    assert after["deferred_frees"] == before["deferred_frees"] + 1
    assert after["allocator"]["pending_frees"] == before["allocator"]["pending_frees"] + 1
    assert new_address != freed_address


def test_record_stream_test_fails_without_deferred_frees():
    # The proof that the test above can fail: with the allocator's deferral switched off the
    # block is handed out at once and the held-back reader reads the new owner's -1s.
    torch.mps_sim.set_protections(True, deferred_frees=False)
    y, freed_address, new_address, before, after = free_while_another_stream_reads()
    assert new_address == freed_address
    assert torch.equal(y, torch.full((4096,), -2.0))
    assert after["deferred_frees"] == before["deferred_frees"]


@pytest.mark.parametrize("start", [False, True], ids=["switch_on", "switch_off"])
def test_record_stream_leaves_a_quiescent_device_free_to_switch(start):
    # Note [record_stream records, it does not encode] (python/csrc/ops_memory.cpp): one
    # thread, no other work anywhere. record_stream used to encode a wait into `other`'s open
    # batch, which nobody commits, and set_threadsafe then refused ("work in flight").
    torch.mps_sim.set_threadsafe(start)
    other = torch.mps_sim.Stream()
    t = torch.arange(1000, dtype=torch.float32, device=DEVICE) * 2
    t.record_stream(other)
    assert torch.equal(t.cpu(), torch.arange(1000, dtype=torch.float32) * 2)
    assert other.query()
    torch.mps_sim.set_threadsafe(not start)  # raised WorkInFlightError
    assert torch.mps_sim.is_threadsafe() is (not start)
    # Also after the stream has done work, and with the tensor still pending on ours.
    with torch.mps_sim.stream(other):
        u = t + 1
    torch.mps_sim.synchronize()
    v = t * 3
    t.record_stream(other)
    u.record_stream(other)
    torch.mps_sim.set_threadsafe(start)
    assert torch.equal(v.cpu(), torch.arange(1000, dtype=torch.float32) * 6)
    assert torch.equal(u.cpu(), torch.arange(1000, dtype=torch.float32) * 2 + 1)


def test_stream_of_another_device_is_refused():
    with pytest.raises((ValueError, RuntimeError), match="mps_sim"):
        torch.mps_sim.set_stream(torch.Stream(device="cpu"))
    with pytest.raises((ValueError, RuntimeError), match="mps_sim"):
        with torch.mps_sim.stream(torch.Stream(device="cpu")):
            pass
    s = torch.mps_sim.Stream()
    with pytest.raises((ValueError, RuntimeError), match="mps_sim"):
        s.wait_stream(torch.Stream(device="cpu"))
    with pytest.raises(ValueError):
        torch.mps_sim.Stream(stream_id=99)
