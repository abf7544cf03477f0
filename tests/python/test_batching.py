"""BatchedModule (mps_threadsafe/batching.py) on mps_sim, every result compared with the CPU.

The order of events in these tests is made certain with gates (a model that waits inside its
forward until the test opens it): a call is queued only while every lane is provably busy, and
two batches are provably at once when each waits for the other at a barrier. Nothing depends
on the machine's load or on sleeps.
"""

import collections
import concurrent.futures
import copy
import gc
import pathlib
import random
import threading
import time
import weakref

import pytest
import torch
from torch import nn

from conftest import DEVICE, run_python
from mps_threadsafe import BatchedModule, BatcherClosedError, PadSequences, batching

TIMEOUT = 120  # seconds; a gate or a result that takes longer is a hang, reported as a failure


def on_device(master):
    """A copy of the (eval-mode) CPU master on mps_sim with the same weights."""
    return copy.deepcopy(master).to(DEVICE)


def cpu_result(master, *args):
    with torch.no_grad():
        return master(*args)


def assert_close(actual, expected, atol=1e-5):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        torch.testing.assert_close(actual.cpu(), expected, atol=atol, rtol=1e-5)
    elif isinstance(expected, dict):
        assert type(actual) is type(expected) and actual.keys() == expected.keys()
        for key in expected:
            assert_close(actual[key], expected[key], atol)
    else:
        assert type(actual) is type(expected) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, atol)


class Gate(nn.Module):
    """Wraps a model: the forward of the first `hold` calls announces itself (`entered`) and
    waits for `opened`; later calls run straight through."""

    def __init__(self, inner, hold=1):
        super().__init__()
        self.inner, self.hold = inner, hold
        self.entered, self.opened = threading.Event(), threading.Event()
        self.calls = 0
        self.lock = threading.Lock()
        self.eval()

    def forward(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
            held = self.calls <= self.hold
        if held:
            self.entered.set()
            assert self.opened.wait(TIMEOUT), "the test never opened the gate"
        return self.inner(*args, **kwargs)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(13, 5), nn.Linear(13, 3)

    def forward(self, x, scale):
        h = x * scale
        return {"a": self.a(h), "pair": (self.b(h).relu(), h.sum(1))}


class Lookup(nn.Module):
    """index_select on the GPU: an out-of-range id fails the kernel, so its whole batch."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))

    def forward(self, ids):
        return self.table.index_select(0, ids.flatten()).view(ids.shape[0], -1)


def models():
    torch.manual_seed(0)
    return {
        "linear_odd": (nn.Linear(37, 11).eval(), lambda rows, seed: (
            torch.randn(rows, 37, generator=torch.Generator().manual_seed(seed)),)),
        "transformer": (nn.TransformerEncoderLayer(24, 3, 40, dropout=0.0,
                                                   batch_first=True).eval(),
                        lambda rows, seed: (torch.randn(
                            rows, 7, 24, generator=torch.Generator().manual_seed(seed)),)),
        "two_inputs_nested_outputs": (TwoOutputs().eval(), lambda rows, seed: (
            torch.randn(rows, 13, generator=torch.Generator().manual_seed(seed)),
            torch.rand(rows, 1, generator=torch.Generator().manual_seed(seed + 1)))),
    }


@pytest.mark.parametrize("name", sorted(models()))
def test_results_from_8_threads_equal_the_cpu_and_an_unbatched_run(name):
    torch.mps_sim.set_threadsafe(True)
    master, make = models()[name]
    model = on_device(master)
    calls = [make(rows, seed) for seed, rows in enumerate([1, 1, 2, 3, 1, 5, 1, 2] * 3)]
    expected = [cpu_result(master, *args) for args in calls]
    with torch.no_grad():
        unbatched = [model(*(a.to(DEVICE) for a in args)) for args in calls]
    results = [None] * len(calls)
    with BatchedModule(model, max_batch=6, workers=3) as batched:
        def client(first):
            for i in range(first, len(calls), 8):
                args = calls[i] if i % 2 else tuple(a.to(DEVICE) for a in calls[i])
                results[i] = batched(*args) if i % 3 else batched.submit(*args).result(TIMEOUT)
        threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        stats = batched.stats()
    for result, cpu, alone in zip(results, expected, unbatched):
        assert_close(result, cpu)
        assert_close(result, _cpu_tree(alone))
    assert stats["completed"] == stats["requests"] == len(calls)
    assert stats["failed"] == stats["refused"] == stats["pending"] == 0


def _cpu_tree(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _cpu_tree(v) for k, v in value.items()}
    return type(value)(_cpu_tree(v) for v in value)


def test_calls_queued_while_the_lane_is_busy_form_batches_of_max_batch():
    master = nn.Linear(8, 4).eval()
    gate = Gate(on_device(master))
    xs = [torch.randn(1, 8) for _ in range(7)]
    with BatchedModule(gate, max_batch=4, workers=1) as batched:
        first = batched.submit(xs[0])
        assert gate.entered.wait(TIMEOUT)  # the only lane is busy from here on
        queued = [batched.submit(x) for x in xs[1:]]
        gate.opened.set()
        results = [f.result(TIMEOUT) for f in [first] + queued]
        stats = batched.stats()
    for x, y in zip(xs, results):
        assert_close(y, cpu_result(master, x))
    assert stats["batch_sizes"] == {1: 1, 2: 1, 4: 1}  # 1 alone, then 6 queued as 4 + 2
    assert stats["batches"] == 3 and stats["mean_batch_size"] == pytest.approx(7 / 3)
    assert stats["ran_alone"] == 1


@pytest.mark.parametrize("how", ["callers_run_them", "workers_run_them"])
def test_two_batches_run_at_once_on_two_streams(how):
    """Each batch waits inside the model for the other: the test completes only if the two
    run at the same time. Callers that find a lane free run their batch on their own thread's
    stream (Note [The caller runs its own batch]); queued calls (futures) run on the lanes'
    streams."""
    torch.mps_sim.set_threadsafe(True)
    master = nn.Linear(8, 4).eval()
    inner = on_device(master)
    meeting = threading.Barrier(2, timeout=TIMEOUT)
    seen_streams = []

    def model(x):
        seen_streams.append(torch.mps_sim.current_stream().stream_id)
        meeting.wait()
        return inner(x)

    # Two sample shapes, so that the two futures cannot share one batch.
    xs = [torch.randn(2, 5, 8), torch.randn(3, 6, 8)]
    with BatchedModule(model, workers=2, device=DEVICE) as batched:
        if how == "callers_run_them":
            own = []

            def call(x):
                own.append(torch.mps_sim.current_stream().stream_id)
                return batched(x)

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                results = list(pool.map(call, xs))
            expected_streams = own
        else:
            results = [f.result(TIMEOUT) for f in [batched.submit(x) for x in xs]]
        stats = batched.stats()
    if how == "workers_run_them":
        expected_streams = stats["lane_streams"]
    for x, y in zip(xs, results):
        assert_close(y, cpu_result(master, x))
    assert stats["max_lanes_busy"] == 2
    assert stats["caller_run_batches"] == (2 if how == "callers_run_them" else 0)
    assert sorted(seen_streams) == sorted(expected_streams)
    assert len(set(seen_streams)) == 2 and 0 not in seen_streams


def test_the_batch_runs_on_its_lane_stream_with_thread_safety_off_too():
    """Lanes are explicit streams: a batcher is parallel whatever the thread policy."""
    torch.mps_sim.set_threadsafe(False)
    seen = []
    inner = on_device(nn.Linear(4, 4).eval())

    def model(x):
        seen.append(torch.mps_sim.current_stream().stream_id)
        return inner(x)

    with BatchedModule(model, workers=2, device=DEVICE) as batched:
        batched(torch.randn(1, 4))
        streams = batched.stats()["lane_streams"]
    assert seen[0] in streams and seen[0] != 0
    assert torch.mps_sim.current_stream().stream_id == 0  # the caller's stream is restored


def queued_behind_the_gate(batched, gate, held_input, xs):
    """Holds the batcher's one lane with a call of `held_input`, queues `xs` behind it, opens
    the gate: the results of xs (a certain order: every x queued while the lane was busy)."""
    held = batched.submit(held_input)
    assert gate.entered.wait(TIMEOUT)
    futures = [batched.submit(x) for x in xs]
    gate.opened.set()
    held.result(TIMEOUT)
    return [f.result(TIMEOUT) for f in futures]


def test_calls_of_different_shapes_batch_apart_and_a_lone_shape_runs_alone():
    master = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    gate = Gate(on_device(master))
    shapes = [(1, 5, 16), (1, 5, 16), (2, 9, 16), (1, 5, 16), (1, 9, 16), (1, 3, 16)]
    xs = [torch.randn(*shape) for shape in shapes]
    with BatchedModule(gate, max_batch=8, workers=1) as batched:
        results = queued_behind_the_gate(batched, gate, torch.randn(1, 4, 16), xs)
        stats = batched.stats()
    for x, y in zip(xs, results):
        assert_close(y, cpu_result(master, x))
    # the held call, then groups (5: 3 calls), (9: 3 samples), (3: alone)
    assert stats["batch_sizes"] == {1: 2, 3: 2}
    assert stats["batches"] == 4


def test_padded_batches_equal_unpadded_cpu_results_and_are_cut_back():
    torch.manual_seed(1)
    master = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    gate = Gate(on_device(master))
    lengths = [3, 5, 8, 2, 4, 11]  # 11 fits no bucket: it runs with its own shape
    xs = [torch.randn(1, n, 16) for n in lengths]
    rule = PadSequences(dim=0, sizes=(4, 8), mask_kwarg="src_key_padding_mask")
    with BatchedModule(gate, max_batch=8, workers=1, pad=rule) as batched:
        results = queued_behind_the_gate(batched, gate, torch.randn(1, 4, 16), xs)
        stats = batched.stats()
    for x, y in zip(xs, results):
        assert y.shape == x.shape
        assert_close(y, cpu_result(master, x))
    # bucket 4: lengths 3, 2, 4; bucket 8: 5, 8; alone: 11 (and the held call)
    assert stats["batch_sizes"] == {1: 2, 2: 1, 3: 1}


def test_pad_without_a_mask_on_a_per_position_model():
    master = nn.Sequential(nn.Linear(6, 6), nn.ReLU()).eval()
    gate = Gate(on_device(master))
    xs = [torch.randn(2, n, 6) for n in (1, 6, 7, 3)]
    with BatchedModule(gate, workers=1, pad=PadSequences(dim=0, multiple=4)) as batched:
        held = batched.submit(torch.randn(1, 2, 6))
        assert gate.entered.wait(TIMEOUT)
        futures = [batched.submit(x) for x in xs]
        gate.opened.set()
        held.result(TIMEOUT)
        for x, f in zip(xs, futures):
            assert_close(f.result(TIMEOUT), cpu_result(master, x))
        # the held call alone; bucket 4: lengths 1 and 3 (2 rows each); bucket 8: 6 and 7
        assert batched.stats()["batch_sizes"] == {1: 1, 4: 2}


def test_a_failing_batch_is_retried_so_the_error_reaches_exactly_the_failing_call():
    """Three calls share a batch, one with an out-of-range id: the kernel fails on the (sim)
    GPU and Metal loses the whole batch; each call is then run alone (Note [A failed batch is
    retried one call at a time]), so only the bad call gets the error, as on the CPU. The
    batch of another shape queued with them, and every later batch on the same lane (run by
    another thread), are clean and equal to the CPU."""
    torch.mps_sim.set_threadsafe(True)
    master = Lookup().eval()
    gate = Gate(on_device(master))
    good, bad = torch.tensor([[1, 2]]), torch.tensor([[3, 12]])
    other_shape = torch.tensor([[4, 5, 6]])
    with pytest.raises(IndexError):
        master(bad)  # the CPU refuses it at the call
    with BatchedModule(gate, max_batch=8, workers=1) as batched:
        held = batched.submit(good)
        assert gate.entered.wait(TIMEOUT)
        shared = [batched.submit(good), batched.submit(bad), batched.submit(good)]
        clean = batched.submit(other_shape)
        gate.opened.set()
        assert_close(held.result(TIMEOUT), cpu_result(master, good))
        assert_close(shared[0].result(TIMEOUT), cpu_result(master, good))
        assert_close(shared[2].result(TIMEOUT), cpu_result(master, good))
        with pytest.raises(RuntimeError, match="index out of range"):
            shared[1].result(TIMEOUT)
        assert_close(clean.result(TIMEOUT), cpu_result(master, other_shape))
        # The lane's next batches: a caller thread's own, then a worker's.
        assert_close(batched(good), cpu_result(master, good))
        later = [batched.submit(good) for _ in range(3)]
        for future in later:
            assert_close(future.result(TIMEOUT), cpu_result(master, good))
        stats = batched.stats()
    assert stats["batches_failed"] == 1 and stats["failed"] == 1 and stats["retried_alone"] == 3
    assert stats["completed"] == stats["requests"] - 1


def test_two_failing_calls_get_exceptions_of_their_own():
    master = Lookup().eval()
    gate = Gate(on_device(master))
    with BatchedModule(gate, workers=1) as batched:
        held = batched.submit(torch.tensor([[1, 2]]))
        assert gate.entered.wait(TIMEOUT)
        bad = [batched.submit(torch.tensor([[11, 2]])) for _ in range(2)]
        gate.opened.set()
        held.result(TIMEOUT)
        errors = [f.exception(TIMEOUT) for f in bad]
    assert all(isinstance(e, RuntimeError) for e in errors) and errors[0] is not errors[1]


class LooksUpThenRaises(Lookup):
    """Encodes its lookup, then raises in Python: the lookup's kernel is still on the stream."""

    def forward(self, ids):
        looked_up = super().forward(ids)
        if ids.shape[1] == 3:
            raise ValueError("three ids")
        return looked_up


@pytest.mark.parametrize("path", ["caller_runs_it", "worker_runs_it"])
def test_a_gpu_error_of_a_batch_that_raised_stays_with_that_batch(path):
    """A model that raises after encoding a kernel that fails on the GPU: its call gets the
    batch's error (the stream is synchronized before the exception leaves), and the next work
    on the same stream (the caller's own, or the lane's next batch) is clean, as on the CPU,
    where the bad lookup raises at the call."""
    torch.mps_sim.set_threadsafe(True)
    master = LooksUpThenRaises().eval()
    bad, good = torch.tensor([[1, 12, 2]]), torch.tensor([[1, 2]])
    with pytest.raises(IndexError):
        master(bad)
    with BatchedModule(on_device(master), workers=1) as batched:
        if path == "caller_runs_it":
            with pytest.raises(RuntimeError, match="index out of range"):
                batched(bad)
            after = torch.ones(3, device=DEVICE) * 2  # this thread's own stream
            torch.mps_sim.current_stream().synchronize()
            assert after.cpu().tolist() == [2.0, 2.0, 2.0]
            assert_close(batched(good), cpu_result(master, good))
        else:
            with pytest.raises(RuntimeError, match="index out of range"):
                batched.submit(bad).result(TIMEOUT)
            assert_close(batched.submit(good).result(TIMEOUT), cpu_result(master, good))
        stats = batched.stats()
    assert stats["failed"] == 1 and stats["completed"] == 1


def refusing(inner, error):
    """`inner`, raising `error` for an input with a value below -100 (POISON)."""
    def model(x):
        if (x.cpu() < -100).any():
            raise error
        return inner(x)
    return model


POISON = -1000.0


def test_a_python_error_in_the_model_reaches_only_its_batch():
    master = nn.Linear(4, 2).eval()
    model = refusing(on_device(master), ValueError("refused a sample"))
    with BatchedModule(model, workers=2, device=DEVICE) as batched:
        with pytest.raises(ValueError, match="refused a sample"):
            batched(torch.full((1, 4), POISON))
        x = torch.randn(3, 4)
        assert_close(batched(x), cpu_result(master, x))
        assert batched.stats()["batches_failed"] == 1


BAD_INPUTS = {
    "not a tensor": ([[1.0] * 8], TypeError, "must be a tensor"),
    "no arguments": ((), TypeError, "input tensor"),
    "0-d": (torch.tensor(1.0), ValueError, "0-dimensional"),
    "requires grad": (torch.randn(1, 8, requires_grad=True), ValueError, "requires grad"),
    "wrong dtype": (torch.randn(1, 8, dtype=torch.float64), TypeError, "float64"),
    "sparse": (torch.randn(1, 8).to_sparse(), TypeError, "sparse"),
    "wrong device": (torch.randn(1, 8, device="meta"), ValueError, "is on meta"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_input_raises_to_its_caller_before_joining_a_batch(case):
    master = nn.Linear(8, 3).eval()
    gate = Gate(on_device(master))
    arg, error, message = BAD_INPUTS[case]
    args = arg if isinstance(arg, tuple) else (arg,)
    with BatchedModule(gate, workers=1) as batched:
        held = batched.submit(torch.randn(1, 8))
        assert gate.entered.wait(TIMEOUT)
        neighbour = batched.submit(torch.ones(2, 8))
        with pytest.raises(error, match=message):
            batched(*args)
        with pytest.raises(error, match=message):
            batched.submit(*args)
        gate.opened.set()
        held.result(TIMEOUT)
        assert_close(neighbour.result(TIMEOUT), cpu_result(master, torch.ones(2, 8)))
        stats = batched.stats()
    assert stats["refused"] == 2 and stats["requests"] == 2 and stats["failed"] == 0


def test_arguments_with_different_row_counts_are_refused():
    with BatchedModule(on_device(TwoOutputs().eval()), workers=1) as batched:
        with pytest.raises(ValueError, match="same batch size"):
            batched(torch.randn(2, 13), torch.rand(3, 1))


def test_a_model_in_training_mode_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    with pytest.raises(ValueError, match="training mode"):
        BatchedModule(model)
    model.eval()
    with BatchedModule(model.to(DEVICE), workers=1) as batched:
        model.train()
        with pytest.raises(ValueError, match="training mode"):
            batched(torch.randn(1, 4))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch": 0}, "max_batch"), ({"workers": 0}, "workers"), ({"workers": 2.5}, "workers"),
    ({"max_batch": True}, "max_batch"), ({"max_wait_ms": -1}, "max_wait_ms"),
    ({"max_wait_ms": float("nan")}, "max_wait_ms"), ({"pad": 3}, "pad rule"),
])
def test_bad_constructor_arguments_are_clear_errors(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        BatchedModule(nn.Linear(2, 2).eval(), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"sizes": ()}, "sizes"), ({"sizes": (8, 4)}, "increasing"), ({"multiple": 0}, "multiple"),
    ({}, "exactly one"), ({"sizes": (4,), "multiple": 4}, "exactly one"),
    ({"dim": -1, "multiple": 4}, "dim"), ({"multiple": 4, "mask_kwarg": "not a name"}, "mask_kwarg"),
])
def test_bad_pad_rules_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PadSequences(**kwargs)


def test_close_runs_everything_accepted_and_refuses_new_calls():
    master = nn.Linear(8, 4).eval()
    gate = Gate(on_device(master))
    xs = [torch.randn(1, 8) for _ in range(20)]
    batched = BatchedModule(gate, max_batch=3, workers=2)
    first = batched.submit(xs[0])
    assert gate.entered.wait(TIMEOUT)
    futures = [first] + [batched.submit(x) for x in xs[1:]]
    closer = threading.Thread(target=batched.close)
    closer.start()
    while not batched.closed:
        time.sleep(0.001)
    with pytest.raises(BatcherClosedError, match="closed"):
        batched(xs[0])
    with pytest.raises(BatcherClosedError):
        batched.submit(xs[0])
    gate.opened.set()
    closer.join(TIMEOUT)
    assert not closer.is_alive()
    for x, f in zip(xs, futures):
        assert_close(f.result(0), cpu_result(master, x))  # done: close() waited for them
    stats = batched.stats()
    assert stats["completed"] == 20 and stats["pending"] == 0 and stats["refused"] == 2
    batched.close()  # twice is fine
    assert isinstance(BatcherClosedError("x"), RuntimeError)


def test_the_context_manager_closes_and_drains():
    master = nn.Linear(8, 4).eval()
    xs = [torch.randn(1, 8) for _ in range(10)]
    with BatchedModule(on_device(master), workers=2) as batched:
        futures = [batched.submit(x) for x in xs]
    assert batched.closed
    for x, f in zip(xs, futures):
        assert f.done()
        assert_close(f.result(), cpu_result(master, x))


def test_a_call_that_times_out_is_withdrawn_and_never_runs():
    master = nn.Linear(8, 4).eval()
    gate = Gate(on_device(master))
    with BatchedModule(gate, workers=1) as batched:
        held = batched.submit(torch.randn(1, 8))
        assert gate.entered.wait(TIMEOUT)
        with pytest.raises(concurrent.futures.TimeoutError):
            batched(torch.randn(1, 8), timeout=0.05)
        stats = batched.stats()  # withdrawn at once, the batch still held
        assert stats["pending"] == 0 and stats["cancelled"] == 1 and stats["lanes_busy"] == 1
        gate.opened.set()
        held.result(TIMEOUT)
        x = torch.randn(1, 8)
        assert_close(batched(x), cpu_result(master, x))
        stats = batched.stats()
    assert stats["cancelled"] == 1 and gate.calls == 2


def test_a_blocking_call_interrupted_while_queued_is_withdrawn_and_never_runs(monkeypatch):
    """Note [Ctrl-C]: a KeyboardInterrupt in a queued call's wait withdraws the call: it never
    runs, and close() does not wait for it. The interrupt comes from a fake answer lock whose
    wait raises, so where it lands is certain (a real signal's landing point is not)."""
    master = nn.Linear(8, 4).eval()
    gate = Gate(on_device(master))
    real_lock = threading.Lock

    class InterruptedInItsWait:
        def __init__(self):
            self.lock, self.acquires = real_lock(), 0

        def acquire(self, blocking=True, timeout=-1):
            self.acquires += 1
            if self.acquires == 2:  # the first is _accept's own; the second the caller's wait
                raise KeyboardInterrupt
            return self.lock.acquire(blocking, timeout)

        def release(self):
            self.lock.release()

    class ThreadingWithTheFakeLock:  # the rest of threading as it is
        Lock = InterruptedInItsWait

        def __getattr__(self, name):
            return getattr(threading, name)

    with BatchedModule(gate, workers=1) as batched:
        held = batched.submit(torch.randn(1, 8))  # holds the one lane: the next call queues
        assert gate.entered.wait(TIMEOUT)
        monkeypatch.setattr(batching, "threading", ThreadingWithTheFakeLock())
        with pytest.raises(KeyboardInterrupt):
            batched(torch.randn(1, 8))
        monkeypatch.undo()
        stats = batched.stats()  # still queued: the next batch drops it
        assert stats["pending"] == 1 and stats["cancelled"] == 0 and stats["lanes_busy"] == 1
        gate.opened.set()
        held.result(TIMEOUT)
        x = torch.randn(1, 8)
        assert_close(batched(x), cpu_result(master, x))
    stats = batched.stats()  # closed: close() returned, not waiting for the withdrawn call
    assert stats["cancelled"] == 1 and stats["completed"] == 2 and gate.calls == 2
    assert stats["pending"] == 0


class Turnstile(nn.Module):
    """Wraps a model: its k-th forward (k < n) announces itself (entered[k]) and waits for
    release[k]."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner = inner
        self.entered = [threading.Event() for _ in range(n)]
        self.release = [threading.Event() for _ in range(n)]
        self.calls = 0
        self.threads = []  # the thread of each forward, in call order
        self.lock = threading.Lock()
        self.eval()

    def forward(self, *args):
        with self.lock:
            k, self.calls = self.calls, self.calls + 1
            self.threads.append(threading.get_ident())
        if k < len(self.entered):
            self.entered[k].set()
            assert self.release[k].wait(TIMEOUT), "the test never released the call"
        return self.inner(*args)


def test_a_blocking_call_that_times_out_while_its_batch_runs_raises_and_is_not_withdrawn(
        monkeypatch):
    """Note [Waking one worker]: a call whose batch already runs is not withdrawn: its caller
    gets TimeoutError, the batch completes, and the batcher goes on. The caller's clock is a
    fake one that runs out exactly when its batch is inside the model, so the order is
    certain."""
    master = nn.Linear(8, 4).eval()
    turnstile = Turnstile(on_device(master), 2)
    real_lock = threading.Lock

    class TimesOutOnceItsBatchRuns:
        def __init__(self):
            self.lock = real_lock()

        def acquire(self, blocking=True, timeout=-1):
            if timeout > 0:  # the caller's wait for its answer
                assert turnstile.entered[1].wait(TIMEOUT)
                return False
            return self.lock.acquire(blocking, timeout)

        def release(self):
            self.lock.release()

    with BatchedModule(turnstile, workers=1) as batched:
        xa, xb = torch.randn(1, 8), torch.randn(1, 8)
        first = batched.submit(xa)  # holds the one lane
        assert turnstile.entered[0].wait(TIMEOUT)
        outcome = {}

        def caller():
            try:
                outcome["result"] = batched(xb, timeout=30)
            except concurrent.futures.TimeoutError as error:
                outcome["error"] = error

        class ThreadingWithTheFakeLock:  # the rest of threading as it is
            Lock = TimesOutOnceItsBatchRuns

            def __getattr__(self, name):
                return getattr(threading, name)

        monkeypatch.setattr(batching, "threading", ThreadingWithTheFakeLock())
        thread = threading.Thread(target=caller)
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while batched.stats()["pending"] != 1:
            assert time.monotonic() < deadline, "the call never queued"
            time.sleep(0.001)
        monkeypatch.undo()
        turnstile.release[0].set()
        thread.join(TIMEOUT)
        assert "still runs" in str(outcome["error"]) and "result" not in outcome
        turnstile.release[1].set()
        assert_close(first.result(TIMEOUT), cpu_result(master, xa))
        x = torch.randn(1, 8)
        assert_close(batched(x), cpu_result(master, x))
    stats = batched.stats()
    assert stats["cancelled"] == 0 and stats["completed"] == 3 and turnstile.calls == 3


def test_a_blocking_call_that_lets_its_group_leave_leads_the_batch_on_its_own_thread():
    """Note [The caller runs its own batch]: with a lane free, the blocking call that brings
    its group to its fair share runs the batch (its own call and the one waiting) itself; the
    waiting future gets its rows. The order is made by a turnstile model, step by step."""
    master = nn.Linear(8, 4).eval()
    turnstile = Turnstile(on_device(master), 3)
    xs = [torch.randn(1, 8) for _ in range(6)]
    with BatchedModule(turnstile, workers=2, max_batch=8, max_wait_ms=600_000) as batched:
        k1 = batched.submit(xs[0])  # one per lane, both held
        assert turnstile.entered[0].wait(TIMEOUT)
        k2 = batched.submit(xs[1])
        assert turnstile.entered[1].wait(TIMEOUT)
        k3, k4 = batched.submit(xs[2]), batched.submit(xs[3])  # fair share 2: ready, no lane
        turnstile.release[0].set()  # k1 done; a worker takes [k3, k4] (held as forward 2)
        assert turnstile.entered[2].wait(TIMEOUT)
        turnstile.release[1].set()
        k2.result(TIMEOUT)  # answered after its lane is free: one lane free now
        k5 = batched.submit(xs[4])  # 3 calls in flight, fair share 2: it waits
        assert batched.stats()["pending"] == 1
        # While the leader delivers k5's answer, k5 and the leader's own call are still in
        # flight (with k3, k4): close() cannot return before every answer is out.
        in_flight_seen = []
        k5.add_done_callback(lambda _: in_flight_seen.append(batched._in_flight_total))
        led = {}

        def caller():
            led["result"] = batched(xs[5])
            led["thread"] = threading.get_ident()

        thread = threading.Thread(target=caller)
        thread.start()
        thread.join(TIMEOUT)
        assert_close(led["result"], cpu_result(master, xs[5]))
        assert_close(k5.result(TIMEOUT), cpu_result(master, xs[4]))
        assert turnstile.threads[3] == led["thread"]
        assert in_flight_seen == [4]
        stats = batched.stats()
        assert stats["caller_led_batches"] == 1 and stats["batch_sizes"].get(2) == 1
        turnstile.release[2].set()
        for x, future in zip(xs, (k1, k2, k3, k4)):
            assert_close(future.result(TIMEOUT), cpu_result(master, x))
    assert batched.stats()["batch_sizes"] == {1: 2, 2: 2}


def wait_until(condition, what):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_close_wakes_a_worker_that_waited_for_a_lane_when_the_last_call_is_answered():
    """Review finding: close() wakes the workers, which find no lane free and wait again; the
    last answer must wake them to exit, or close() waits for them forever."""
    master = nn.Linear(4, 3).eval()
    turnstile = Turnstile(on_device(master), 2)
    batched = BatchedModule(turnstile, workers=2, max_wait_ms=0)
    callers = [threading.Thread(target=batched, args=(torch.randn(1, 4),)) for _ in range(2)]
    for k, caller in enumerate(callers):  # each runs its own call on a lane, held
        caller.start()
        assert turnstile.entered[k].wait(TIMEOUT)
    x = torch.randn(1, 4)
    queued = batched.submit(x)  # no lane free
    closer = threading.Thread(target=batched.close)
    closer.start()
    wait_until(lambda: len(batched._drained._waiters) == 1 and len(batched._cond._waiters) == 2,
               "close() and both workers never waited")
    turnstile.release[0].set()
    assert_close(queued.result(TIMEOUT), cpu_result(master, x))
    turnstile.release[1].set()
    for caller in callers:
        caller.join(TIMEOUT)
    closer.join(TIMEOUT)
    assert not closer.is_alive(), "close() hung"
    assert not any(thread.is_alive() for thread in batched._threads)


def test_a_slow_done_callback_does_not_hold_up_a_queued_call_while_a_lane_is_free():
    """Review finding: the worker that frees a lane runs its futures' done-callbacks; a call
    queued while every lane was busy must be run by another worker meanwhile."""
    master = nn.Linear(4, 3).eval()
    turnstile = Turnstile(on_device(master), 2)
    with BatchedModule(turnstile, workers=2, max_wait_ms=0) as batched:
        caller = threading.Thread(target=batched, args=(torch.randn(1, 4),))
        caller.start()  # runs its own call on lane A, held
        assert turnstile.entered[0].wait(TIMEOUT)
        first = batched.submit(torch.randn(1, 4))  # a worker runs it on lane B, held
        assert turnstile.entered[1].wait(TIMEOUT)
        in_callback, callback_may_return = threading.Event(), threading.Event()
        first.add_done_callback(lambda _: (in_callback.set(), callback_may_return.wait(TIMEOUT)))
        x = torch.randn(1, 4)
        queued = batched.submit(x)  # no lane free
        turnstile.release[1].set()
        assert in_callback.wait(TIMEOUT)
        try:
            assert_close(queued.result(TIMEOUT), cpu_result(master, x))
        finally:
            callback_may_return.set()
            turnstile.release[0].set()
            caller.join(TIMEOUT)


def test_a_done_callback_raising_systemexit_leaves_its_batch_mates_answered_and_the_worker_alive():
    """Review finding: Future lets a callback's BaseException through; the rest of the batch
    is still answered and the worker lives on."""
    master = nn.Linear(4, 3).eval()
    turnstile = Turnstile(on_device(master), 1)
    with BatchedModule(turnstile, workers=1, max_wait_ms=600_000) as batched:
        blocker = batched.submit(torch.randn(1, 4))
        assert turnstile.entered[0].wait(TIMEOUT)
        xs = [torch.randn(1, 4) for _ in range(2)]
        futures = [batched.submit(x) for x in xs]  # one batch once the lane frees

        def leave(_):
            raise SystemExit("a callback leaves")

        futures[0].add_done_callback(leave)
        turnstile.release[0].set()
        blocker.result(TIMEOUT)
        for x, future in zip(xs, futures):
            assert_close(future.result(TIMEOUT), cpu_result(master, x))
        x = torch.randn(1, 4)
        assert_close(batched.submit(x).result(TIMEOUT), cpu_result(master, x))
        assert all(thread.is_alive() for thread in batched._threads)


def test_an_answer_wakes_one_worker_not_all_of_them(monkeypatch):
    """Note [Waking one worker]: while calls queue and answers come back, no event wakes
    every worker (only close() does)."""
    master = nn.Linear(4, 2).eval()
    with BatchedModule(on_device(master), workers=4, max_wait_ms=0) as batched:
        woken_all = []
        real = batched._cond.notify_all
        monkeypatch.setattr(batched._cond, "notify_all",
                            lambda: woken_all.append(True) or real())
        xs = [torch.randn(1 + i % 3, 4) for i in range(64)]
        futures = [batched.submit(x) for x in xs]
        for x, f in zip(xs, futures):
            assert_close(f.result(TIMEOUT), cpu_result(master, x))
        assert not woken_all
        assert batched.stats()["completed"] == 64


def test_the_callers_grad_modes_and_autocast_do_not_change_results():
    """Note [What a batch runs under]: a batch runs under no_grad with autocast off whichever
    thread runs it, so a caller inside autocast or inference_mode gets the CPU's float32
    result, and the result is an ordinary tensor it may modify in place."""
    master = nn.Linear(8, 4).eval()
    x = torch.randn(2, 8)
    with BatchedModule(on_device(master), workers=1) as batched:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y = batched(x)
        assert y.dtype == torch.float32
        assert_close(y, cpu_result(master, x))
        with torch.inference_mode():
            z = batched(x)
        assert_close(z, cpu_result(master, x))
        w = batched(x)
        assert not w.requires_grad and not w.is_inference()
        w.add_(1)  # an ordinary tensor
        assert_close(w, cpu_result(master, x) + 1)


def test_inputs_on_the_cpu_and_results_moved_once_to_the_cpu():
    master = nn.Linear(8, 4).eval()
    xs = [torch.randn(1, 8) for _ in range(4)]
    gate = Gate(on_device(master))
    with BatchedModule(gate, workers=1, output_device="cpu") as batched:
        held = batched.submit(xs[0])
        assert gate.entered.wait(TIMEOUT)
        futures = [batched.submit(x) for x in xs[1:]]
        gate.opened.set()
        for x, f in zip(xs, [held] + futures):
            y = f.result(TIMEOUT)
            assert y.device.type == "cpu"
            assert_close(y, cpu_result(master, x))


def test_a_zero_row_call_runs_alone_and_returns_the_models_empty_result():
    master = nn.Linear(8, 4).eval()
    with BatchedModule(on_device(master), workers=1) as batched:
        y = batched(torch.randn(0, 8))
        assert y.shape == (0, 4)


def test_the_cpu_device_works_without_streams():
    master = nn.Linear(8, 4).eval()
    xs = [torch.randn(1, 8) for _ in range(16)]
    with BatchedModule(master, workers=2) as batched:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(batched, xs))
        assert batched.stats()["lane_streams"] == [None, None]
    for x, y in zip(xs, results):
        assert_close(y, cpu_result(master, x))


def test_many_threads_mixing_calls_and_futures_lose_and_duplicate_nothing():
    torch.mps_sim.set_threadsafe(True)
    master = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    model = on_device(master)
    rows = [1, 2, 1, 3, 1, 1, 4, 1]
    with BatchedModule(model, max_batch=5, workers=3) as batched:
        def client(t):
            generator = torch.Generator().manual_seed(t)
            for i in range(12):
                x = torch.randn(rows[(t + i) % len(rows)], 12, generator=generator)
                y = batched(x) if (t + i) % 2 else batched.submit(x).result(TIMEOUT)
                assert_close(y, cpu_result(master, x))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for f in [pool.submit(client, t) for t in range(16)]:
                f.result(TIMEOUT)
        stats = batched.stats()
    assert stats["requests"] == stats["completed"] == 16 * 12
    assert sum(stats["lane_batches"]) == stats["batches"]
    assert sum(size * n for size, n in stats["batch_sizes"].items()) == stats["samples"]


@pytest.mark.parametrize("use", ["batched(torch.randn(1, 4))", "batched.stats()"])
def test_fork_child_gets_a_clear_error_not_a_hang(use):
    """Calls and stats() alike: the lock may have been held by another thread at fork()."""
    result = run_python(f"""
        import os, torch, mps_threadsafe
        from mps_threadsafe import BatchedModule
        batched = BatchedModule(torch.nn.Linear(4, 2).eval(), workers=2)
        batched(torch.randn(1, 4))
        pid = os.fork()
        if pid == 0:
            try:
                {use}
                os._exit(3)
            except RuntimeError as e:
                os._exit(0 if "fork" in str(e) else 4)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, status
        print(batched(torch.randn(1, 4)).shape)  # the parent still works
        batched.close()
        print("ok")
    """, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_a_batcher_nobody_closed_still_runs_what_it_accepted_at_exit():
    result = run_python("""
        import atexit
        futures = []
        # Registered before mps_threadsafe's own exit hook, so it runs after it (LIFO).
        atexit.register(lambda: print("done", sum(f.done() for f in futures)))
        import torch, mps_threadsafe
        from mps_threadsafe import BatchedModule
        model = torch.nn.Linear(4, 2).eval().to("mps_sim")
        batched = BatchedModule(model, workers=1)
        futures += [batched.submit(torch.randn(1, 4)) for _ in range(50)]
    """, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "done 50" in result.stdout


def test_protections_off_the_lanes_race_and_the_sim_catches_it():
    """The proof that the lanes encode at once through the runtime: with the runtime's
    protections off, two lanes running the story block's layer_norm meet inside the shared
    kernel object (a race meeting makes the overlap certain) and the sim reports the violation
    Metal would crash on; with protections on, none."""
    code = """
        import threading, torch, mps_threadsafe
        from mps_threadsafe import BatchedModule
        from mps_threadsafe.suites import workloads
        sim = torch.mps_sim
        sim.set_violation_policy("count")
        sim.set_protections({protect})
        model = workloads.replicate(workloads.build("story_block"), "mps_sim")
        x = workloads.input_for("story_block", 1).to("mps_sim")
        with torch.no_grad():
            model(x); sim.synchronize()
        meeting = threading.Barrier(2, timeout=60)
        def met(x):
            meeting.wait()  # both lanes start their batch together
            return model(x)
        if not {protect}:  # protected, the second lane cannot reach the object to meet
            sim.set_race_meeting("shared_object", 5_000_000)
        with BatchedModule(met, workers=2, device="mps_sim") as batched:
            threads = [threading.Thread(target=batched, args=(x,)) for _ in range(2)]
            [t.start() for t in threads]; [t.join() for t in threads]
        sim.set_race_meeting("shared_object", 0)
        print("VIOLATIONS", len(sim.violations()))
    """
    off = run_python(code.format(protect="False"), timeout=240)
    on = run_python(code.format(protect="True"), timeout=240)
    assert on.returncode == 0, on.stderr
    assert "VIOLATIONS 0" in on.stdout
    assert off.returncode == 0, off.stderr
    count = int(off.stdout.split("VIOLATIONS")[1].split()[0])
    assert count > 0, off.stdout


def test_every_stats_key_is_documented():
    with BatchedModule(nn.Linear(2, 2).eval(), workers=1) as batched:
        batched(torch.randn(1, 2))
        keys = set(batched.stats())
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "stats.md").read_text()
    section = doc.split("## `BatchedModule.stats()`", 1)[1]
    undocumented = sorted(k for k in keys if f"| `{k}` |" not in section)
    assert not undocumented, f"docs/stats.md does not document {undocumented}"


def test_an_output_without_the_batch_dimension_fails_alone_as_in_a_batch():
    """Whether a call fails must not depend on whether it happened to share a batch."""
    inner = on_device(nn.Linear(4, 2).eval())

    def model(x):
        return inner(x), inner.weight.sum()  # a 0-d output cannot be split

    gate = Gate(model)
    with BatchedModule(gate, workers=1, device=DEVICE) as batched:
        with pytest.raises(RuntimeError, match="batch dimension first"):
            gate.opened.set()
            batched(torch.randn(1, 4))  # alone
    gate = Gate(model)
    gate.opened.set()
    with BatchedModule(gate, workers=1, device=DEVICE) as batched:
        futures = [batched.submit(torch.randn(1, 4)) for _ in range(3)]
        for future in futures:
            with pytest.raises(RuntimeError, match="batch dimension first"):
                future.result(TIMEOUT)


def test_a_model_on_another_device_than_device_is_refused():
    with pytest.raises(ValueError, match="move the model first"):
        BatchedModule(nn.Linear(2, 2).eval(), device=DEVICE)


def test_no_caller_thread_is_bound_to_a_lanes_stream():
    """Note [A lane's stream is its worker's own]: with thread safety on, the lanes' streams
    are their workers' own, so the thread policy binds no caller to one (a caller's work would
    otherwise queue behind the lane's batches and share their command buffers)."""
    torch.mps_sim.set_threadsafe(True)
    model = on_device(nn.Linear(4, 4).eval())
    with BatchedModule(model, workers=3) as batched:
        lanes = set(batched.stats()["lane_streams"])
        bound = []
        ready = threading.Barrier(8, timeout=TIMEOUT)

        def caller():
            bound.append(torch.mps_sim.current_stream().stream_id)
            batched(torch.randn(1, 4))
            ready.wait()  # all 8 alive at once: 8 distinct bindings

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
    assert len(lanes) == 3 and 0 not in lanes
    assert len(set(bound)) == 8 and not lanes & set(bound)


def test_a_batch_leaves_at_its_fair_share_without_waiting_out_max_wait():
    """Note [When a batch leaves]: with max_wait_ms far beyond the test's timeout, batches
    still leave as soon as they hold ceil(in flight / lanes) samples: 3 queued calls, 1 lane."""
    master = nn.Linear(8, 4).eval()
    gate = Gate(on_device(master))
    xs = [torch.randn(1, 8) for _ in range(4)]
    with BatchedModule(gate, max_batch=8, max_wait_ms=3_600_000, workers=1) as batched:
        held = batched.submit(xs[0])
        assert gate.entered.wait(TIMEOUT)
        queued = [batched.submit(x) for x in xs[1:]]
        gate.opened.set()
        for x, f in zip(xs, [held] + queued):
            assert_close(f.result(TIMEOUT), cpu_result(master, x))
        alone = torch.randn(2, 8)
        assert_close(batched(alone), cpu_result(master, alone))  # a lone caller: at once
        assert_close(batched.submit(alone).result(TIMEOUT), cpu_result(master, alone))
        stats = batched.stats()
    assert stats["batch_sizes"] == {1: 1, 2: 2, 3: 1}
    assert stats["caller_run_batches"] == 1


# ---- the hostile review's findings, each a test ---------------------------------------------


def queued_and_alone(batched, gate, xs):
    """Results (or exceptions) of xs queued together behind the gate, and of xs[0] alone."""
    held = batched.submit(xs[0])
    assert gate.entered.wait(TIMEOUT)
    futures = [batched.submit(x) for x in xs]
    gate.opened.set()
    outcomes = [f.exception(TIMEOUT) or f.result(0) for f in [held] + futures]
    return outcomes[1:], outcomes[0]


def test_pad_refuses_an_output_without_the_padded_dimension_alone_and_batched():
    """A pooled output cannot be cut back: an error whether or not the call shared a batch,
    never a silently cut tensor (its size only happened to equal the bucket's)."""
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(6, 8)

        def forward(self, x):
            return self.head(x.mean(1))  # (B, 8): 8 is also a bucket length

    gate = Gate(on_device(Pooled().eval()))
    rule = PadSequences(dim=0, sizes=(8, 16))
    with BatchedModule(gate, workers=1, pad=rule) as batched:
        batched_outcomes, alone = queued_and_alone(
            batched, gate, [torch.randn(1, n, 6) for n in (3, 5)])
    for outcome in batched_outcomes + [alone]:
        assert isinstance(outcome, RuntimeError) and "keep the padded dimension" in str(outcome)


def test_padded_results_are_contiguous_like_the_models_own():
    master = nn.Sequential(nn.Linear(6, 6)).eval()
    gate = Gate(on_device(master))
    xs = [torch.randn(2, n, 6) for n in (3, 5)]
    with BatchedModule(gate, workers=1, pad=PadSequences(dim=0, sizes=(8,))) as batched:
        outcomes, alone = queued_and_alone(batched, gate, xs)
    for x, y in zip(xs, outcomes):
        assert y.is_contiguous() and y.view(-1).numel() == y.numel()
        assert_close(y, cpu_result(master, x))


def test_a_non_tensor_output_is_an_error_alone_and_batched():
    inner = on_device(nn.Linear(4, 2).eval())

    def model(x):
        return inner(x), int(x.shape[0])  # one int for the whole batch: not splittable

    gate = Gate(model)
    with BatchedModule(gate, workers=1, device=DEVICE) as batched:
        outcomes, alone = queued_and_alone(batched, gate, [torch.randn(1, 4), torch.randn(2, 4)])
    for outcome in outcomes + [alone]:
        assert isinstance(outcome, RuntimeError) and "returned a int" in str(outcome)


def test_dict_subclasses_and_none_pass_through():
    inner = on_device(nn.Linear(4, 2).eval())

    def model(x):
        out = collections.defaultdict(list)
        out["y"] = inner(x)
        return out, None

    x = torch.randn(3, 4)
    with BatchedModule(model, workers=1, device=DEVICE) as batched:
        out, nothing = batched(x)
    assert isinstance(out, collections.defaultdict) and nothing is None
    assert_close(out["y"], cpu_result(inner.cpu(), x))


def test_a_worker_survives_a_model_that_raises_systemexit():
    inner = on_device(nn.Linear(4, 2).eval())
    model = refusing(inner, SystemExit("the model wanted out"))
    with BatchedModule(model, workers=1, device=DEVICE) as batched:
        with pytest.raises(RuntimeError, match="interrupted by SystemExit"):
            batched.submit(torch.full((1, 4), POISON)).result(TIMEOUT)
        x = torch.randn(1, 4)
        assert_close(batched.submit(x).result(TIMEOUT), cpu_result(inner.cpu(), x))


def test_close_from_inside_the_model_on_two_lanes_does_not_deadlock():
    inner = on_device(nn.Linear(4, 2).eval())
    meeting = threading.Barrier(2, timeout=TIMEOUT)
    holder = {}

    def model(x):
        meeting.wait()
        holder["batched"].close()  # from inside: does not wait for itself
        return inner(x)

    holder["batched"] = batched = BatchedModule(model, workers=2, device=DEVICE)
    futures = [batched.submit(torch.randn(1, n, 4)) for n in (1, 2)]  # two shapes: two lanes
    for f in futures:
        assert f.result(TIMEOUT).shape[-1] == 2
    batched.close()
    assert batched.closed


def test_a_blocking_call_from_inside_the_model_is_an_error_not_a_deadlock():
    inner = on_device(nn.Linear(4, 2).eval())
    holder = {}

    def model(x):
        return holder["batched"](x)

    with BatchedModule(model, workers=1, device=DEVICE) as batched:
        holder["batched"] = batched
        with pytest.raises(RuntimeError, match="from inside its own batch"):
            batched(torch.randn(1, 4))
        with pytest.raises(RuntimeError, match="from inside its own batch"):
            batched.submit(torch.randn(1, 4)).result(TIMEOUT)
    del inner


def test_a_done_callback_may_submit_and_runs_after_the_lane_is_free():
    master = nn.Linear(4, 2).eval()
    with BatchedModule(on_device(master), workers=1) as batched:
        chained = concurrent.futures.Future()
        x = torch.randn(1, 4)
        first = batched.submit(x)
        first.add_done_callback(lambda f: chained.set_result(batched.submit(x)))
        assert_close(first.result(TIMEOUT), cpu_result(master, x))
        second = chained.result(TIMEOUT).result(TIMEOUT)
    assert second.shape == (1, 2)


def test_the_callers_inference_mode_does_not_reach_a_batch_it_runs_itself():
    master = nn.Linear(4, 2).eval()
    with BatchedModule(on_device(master), workers=1) as batched:
        with torch.inference_mode():
            y = batched(torch.randn(1, 4))
        assert batched.stats()["caller_run_batches"] == 1
    assert not y.is_inference()
    y.add_(1)


def test_close_waits_for_a_batch_its_caller_is_running():
    gate = Gate(on_device(nn.Linear(4, 2).eval()))
    batched = BatchedModule(gate, workers=1)
    caller = threading.Thread(target=batched, args=(torch.randn(1, 4),))
    caller.start()
    assert gate.entered.wait(TIMEOUT)
    closer = threading.Thread(target=batched.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # the caller's batch is still running: close() waits for it
    gate.opened.set()
    closer.join(TIMEOUT)
    caller.join(TIMEOUT)
    assert not closer.is_alive() and batched.stats()["completed"] == 1


def test_no_group_waits_behind_one_that_cannot_fill():
    """With max_wait_ms far beyond the test's timeout, a full group and a lone odd shape both
    leave as soon as the lane frees (each has reached its fair share)."""
    master = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    gate = Gate(on_device(master))
    with BatchedModule(gate, max_batch=4, max_wait_ms=3_600_000, workers=1) as batched:
        held = batched.submit(torch.randn(1, 3, 8))
        assert gate.entered.wait(TIMEOUT)
        odd = batched.submit(torch.randn(1, 7, 8))
        full = [batched.submit(torch.randn(1, 5, 8)) for _ in range(4)]
        gate.opened.set()
        for f in [held, odd] + full:
            f.result(TIMEOUT)


def test_only_the_first_argument_must_have_the_parameters_dtype():
    master = nn.Linear(13, 5).eval()
    inner = on_device(master)

    def model(x, scale):  # casts its auxiliary input itself, as the CPU model does
        return inner(x * scale.float())

    x, scale = torch.randn(2, 13), torch.rand(2, 1, dtype=torch.float64)
    with BatchedModule(model, workers=1, device=DEVICE) as batched:
        out = batched(x, scale)
    assert_close(out, cpu_result(master, x * scale.float()))


def test_a_submodule_switched_to_training_is_refused_for_the_batch():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
    with BatchedModule(model.to(DEVICE), workers=1) as batched:
        model[1].train()
        with pytest.raises(ValueError, match="training mode"):
            batched(torch.randn(1, 4))


@pytest.mark.parametrize("timeout", [-1, "soon", True, float("nan")])
def test_a_bad_timeout_is_refused_before_the_call_is_accepted(timeout):
    with BatchedModule(on_device(nn.Linear(4, 2).eval()), workers=1) as batched:
        with pytest.raises(ValueError, match="timeout"):
            batched(torch.randn(1, 4), timeout=timeout)
        assert batched.stats()["requests"] == 0


def test_devices_without_cross_stream_ordering_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        BatchedModule(nn.Linear(2, 2).eval(), device="meta")


# ---- the second review's findings -------------------------------------------------------------


def test_a_done_callback_that_blocks_or_closes_gets_an_error_or_returns_not_a_hang():
    master = nn.Linear(4, 2).eval()
    batched = BatchedModule(on_device(master), workers=1)
    seen = concurrent.futures.Future()

    def callback(_):
        try:
            batched(torch.randn(1, 4))
            seen.set_result("no error")
        except RuntimeError as error:
            seen.set_result(str(error))
        batched.close()  # from the worker's thread: does not wait for itself

    first = batched.submit(torch.randn(1, 4))
    first.add_done_callback(callback)
    assert "from inside its own batch" in seen.result(TIMEOUT)
    batched.close()
    assert batched.closed and first.done()


def test_close_without_waiting_still_drains_at_exit():
    result = run_python("""
        import atexit
        futures = []
        atexit.register(lambda: print("answered", sum(f.done() for f in futures)))
        import torch, mps_threadsafe
        from mps_threadsafe import BatchedModule
        batched = BatchedModule(torch.nn.Linear(4, 2).eval().to("mps_sim"), workers=1)
        futures += [batched.submit(torch.randn(1, 4)) for _ in range(20)]
        batched.close(wait=False)
    """, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "answered 20" in result.stdout


def test_a_future_the_caller_set_itself_does_not_stop_the_batcher():
    master = nn.Linear(4, 2).eval()
    gate = Gate(on_device(master))
    with BatchedModule(gate, workers=1) as batched:
        held = batched.submit(torch.randn(1, 4))
        assert gate.entered.wait(TIMEOUT)
        meddled = batched.submit(torch.randn(1, 4))
        meddled.set_result("mine")  # misuse: the batcher's future, set by its caller
        x = torch.randn(1, 4)
        after = batched.submit(x)
        gate.opened.set()
        held.result(TIMEOUT)
        assert_close(after.result(TIMEOUT), cpu_result(master, x))
        assert meddled.result(0) == "mine"


@pytest.mark.parametrize("timeout", [float("inf"), 1e10])  # 1e10 s: past threading.TIMEOUT_MAX
def test_an_infinite_or_huge_timeout_means_no_timeout(timeout):
    master = nn.Linear(4, 2).eval()
    gate = Gate(on_device(master))
    with BatchedModule(gate, workers=1) as batched:
        held = batched.submit(torch.randn(1, 4))
        assert gate.entered.wait(TIMEOUT)
        x = torch.randn(1, 4)
        queued = concurrent.futures.ThreadPoolExecutor(1).submit(
            batched, x, timeout=timeout)
        while batched.stats()["pending"] == 0:
            time.sleep(0.001)
        gate.opened.set()
        held.result(TIMEOUT)
        assert_close(queued.result(TIMEOUT), cpu_result(master, x))


def test_a_bug_while_running_a_batch_reaches_its_callers_and_frees_the_lane(monkeypatch):
    """Whatever raises while a worker runs a batch (here: the outcomes step itself), the
    batch's callers get the error, the lane comes back, and close() does not hang."""
    master = nn.Linear(4, 2).eval()
    with BatchedModule(on_device(master), workers=1) as batched:
        def broken(*internals):
            raise RuntimeError("an internal fault")

        monkeypatch.setattr(batched, "_outcomes", broken)
        with pytest.raises(RuntimeError, match="an internal fault"):
            batched.submit(torch.randn(1, 4)).result(TIMEOUT)
        monkeypatch.undo()
        x = torch.randn(1, 4)
        assert_close(batched.submit(x).result(TIMEOUT), cpu_result(master, x))
        stats = batched.stats()
    assert stats["lanes_busy"] == 0 and stats["failed"] == 1


# ---- Note [How many lanes] ------------------------------------------------------------------


def drive_tuner(rates, lanes=8, windows=400, noise=0.0, seed=0):
    """Feeds a _LaneTuner one window after another, each measuring rates[active lanes] (times
    1 + a seeded gaussian of sd `noise`); returns the lanes it used in each window."""
    draw = random.Random(seed)
    tuner = batching._LaneTuner(lanes, now=0.0)
    used = []
    for _ in range(windows):
        used.append(tuner.active)
        tuner.window_done(rates[tuner.active] * (1 + draw.gauss(0.0, noise)))
    return used


PEAKS = [1, 2, 4, 8]


@pytest.mark.parametrize("noise", [0.0, 0.05])
@pytest.mark.parametrize("best", PEAKS)
def test_the_lane_tuner_settles_on_the_lanes_with_the_most_throughput(best, noise):
    """Throughput peaked at `best` lanes, 30% lower at each step away (1, 2, 4, 8 lanes), with
    and without 5% noise per window: the tuner, starting from all 8, spends at least 80% of
    the second half of its windows there."""
    rates = {n: 1000.0 * 0.7 ** abs(i - PEAKS.index(best)) for i, n in enumerate(PEAKS)}
    for seed in range(5):
        settled = drive_tuner(rates, noise=noise, seed=seed)[200:]
        assert settled.count(best) >= 0.8 * len(settled), (seed, collections.Counter(settled))


@pytest.mark.parametrize("noise", [0.0, 0.03, 0.08])
def test_the_lane_tuner_backs_off_when_trials_gain_nothing(noise):
    """A flat curve (every lane count equally fast, as with fewer callers than lanes), exact
    or with up to 8% noise per window: trials lose and come less often, so the tuner changes
    lanes in at most 1 window in 8, and noise alone rarely keeps a trial."""
    for seed in range(5):
        tuner = batching._LaneTuner(8, now=0.0)
        kept = 0
        draw = random.Random(seed)
        for _ in range(400):
            trial = tuner.trial_from is not None
            tuner.window_done(1000.0 * (1 + draw.gauss(0.0, noise)))
            kept += trial and tuner.trial_from is None and tuner.backoff == 1
        assert tuner.changes <= 50 and kept <= 2, (seed, tuner.changes, kept)


def test_the_lane_tuner_windows_need_time_and_batches_of_the_lanes_in_use():
    window, per_lane = batching._LaneTuner.WINDOW_S, batching._LaneTuner.WINDOW_BATCHES
    tuner = batching._LaneTuner(4, now=0.0)
    for _ in range(per_lane * 4 - 1):  # long enough, but too few batches: no window yet
        tuner.batch_done(8, now=2 * window, busy=3)
    assert tuner.rate is None
    tuner.batch_done(8, now=2 * window, busy=3)
    assert tuner.rate == pytest.approx(8 * per_lane * 4 / (2 * window))
    # The first window also started the first trial: half the lanes, busy ones finishing.
    assert tuner.active == 2 and tuner.trial_from is not None
    tuner.batch_done(8, now=1.0, busy=3)  # a batch of the old lanes: not counted
    tuner.batch_done(8, now=1.0, busy=2)  # settled: the trial's window starts now
    for i in range(batching._LaneTuner.TRIAL_WINDOWS * per_lane * 2):
        tuner.batch_done(8, now=2.0, busy=1)
    assert tuner.trial_from is None  # judged, though slow (a second): far slower, undone
    assert tuner.active == 4


def test_the_lane_tuner_window_starts_again_when_the_batcher_was_idle():
    tuner = batching._LaneTuner(1, now=0.0)
    tuner.batch_done(8, now=0.001, busy=0)
    tuner.restart(10.0)  # idle from 0.001 to 10: that time is not in the window
    for i in range(batching._LaneTuner.WINDOW_BATCHES):
        tuner.batch_done(8, now=10.0 + batching._LaneTuner.WINDOW_S, busy=0)
    assert tuner.rate == pytest.approx(8 * batching._LaneTuner.WINDOW_BATCHES
                                       / batching._LaneTuner.WINDOW_S)


def test_adaptive_batches_use_only_the_lanes_the_tuner_chose(monkeypatch):
    """With the tuner at one lane of four, 8 calls queued behind a held batch run on one lane
    at a time, batched by the fair share of one lane (ceil(in flight / 1)), and equal the CPU.
    Without adaptive, every lane stays in use."""
    monkeypatch.setattr(batching._LaneTuner, "WINDOW_S", 1e9)  # no window ends in this test
    torch.mps_sim.set_threadsafe(True)
    master = nn.Linear(6, 3).eval()
    xs = [torch.randn(1, 6) for _ in range(8)]
    outcome = {}
    for adaptive in (True, False):
        gate = Gate(on_device(master))
        with BatchedModule(gate, max_batch=8, workers=4, adaptive=adaptive) as batched:
            if adaptive:
                with batched._lock:  # what the tuner would choose for a GIL-bound model
                    batched._tuner.active = batched._active_lanes = 1
            results = queued_behind_the_gate(batched, gate, torch.randn(1, 6), xs)
            outcome[adaptive] = batched.stats()
        for x, y in zip(xs, results):
            assert_close(y, cpu_result(master, x))
    assert outcome[True]["max_lanes_busy"] == 1 and outcome[True]["active_lanes"] == 1
    assert outcome[True]["batch_sizes"] == {1: 1, 8: 1}  # the held call, then all 8 at once
    assert outcome[True]["adaptive"] and not outcome[False]["adaptive"]
    assert outcome[False]["active_lanes"] == 4


def test_adaptive_must_be_a_bool():
    with pytest.raises(TypeError, match="adaptive must be True or False"):
        BatchedModule(nn.Linear(2, 2).eval(), adaptive="yes")


# ---- interrupts and failures around a caller-run call ----------------------------------------


class _InterruptingClock:
    """time.perf_counter for batching.py that raises KeyboardInterrupt at its n-th call: a
    Ctrl-C landing, deterministically, in the bookkeeping around a model call."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def perf_counter(self):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return time.perf_counter()


@pytest.mark.parametrize("path", ["lone", "padded"])
def test_a_ctrl_c_after_the_model_call_still_frees_the_lane_and_the_call(monkeypatch, path):
    """A KeyboardInterrupt raised right after the model returned (the second perf_counter of
    the call: the first stamps its acceptance) reaches the caller, and the call is settled as
    a failed batch of one: the batcher's one lane serves the next call, close() returns and the
    counts add up. Without the settling the lane stayed busy and the next call timed out."""
    pad = PadSequences(dim=0, sizes=(8,)) if path == "padded" else None
    batched = BatchedModule(nn.Linear(4, 4).eval(), workers=1, pad=pad)
    x = torch.randn(2, 3, 4) if pad else torch.randn(2, 4)
    batched(x)
    clock = _InterruptingClock(at=2)
    monkeypatch.setattr(batching, "time", clock)
    with pytest.raises(KeyboardInterrupt):
        batched(x)
    monkeypatch.undo()
    assert clock.calls == 2
    assert batched(x, timeout=10).shape == ((2, 3, 4) if pad else (2, 4))
    batched.close()
    stats = batched.stats()
    assert stats["lanes_busy"] == 0 and stats["requests"] == 3
    assert stats["completed"] == 2 and stats["failed"] == 1
    assert stats["batches"] == sum(stats["batch_sizes"].values()) == 3


@pytest.mark.parametrize("path", ["caller_runs_it", "worker_runs_it"])
def test_a_gpu_error_of_an_interrupted_batch_does_not_reach_the_lanes_next_batch(path):
    """With thread safety off the batch runs on its lane's stream: a model that encodes a
    failing lookup and is then interrupted (KeyboardInterrupt) leaves the kernel's error with
    its own batch; the next call on the same lane is clean."""
    torch.mps_sim.set_threadsafe(False)
    master = Lookup().eval()
    model = on_device(master)
    bad, good = torch.tensor([[1, 12, 2]]), torch.tensor([[1, 2]])

    def interrupted_after_the_lookup(ids):
        out = model(ids)
        if ids.shape[1] == 3:  # (not ids.max(): reading a value would synchronize)
            raise KeyboardInterrupt
        return out

    with BatchedModule(interrupted_after_the_lookup, workers=1, device=DEVICE) as batched:
        if path == "caller_runs_it":
            with pytest.raises(KeyboardInterrupt):
                batched(bad)
            assert_close(batched(good), cpu_result(master, good))
        else:
            with pytest.raises(RuntimeError, match="interrupted by KeyboardInterrupt"):
                batched.submit(bad).result(TIMEOUT)
            assert_close(batched.submit(good).result(TIMEOUT), cpu_result(master, good))


class KeepsItsActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.activation = None

    def forward(self, x):
        big = torch.cat([self.linear(x)] * 100, dim=-1)
        self.activation = weakref.ref(big)
        raise ValueError("fails after computing an activation")


@pytest.mark.parametrize("path", ["lone", "padded"])
def test_a_failed_call_frees_its_activations_when_the_caller_drops_the_error(path):
    """A call its caller runs, as calling the model does: no reference cycle through the
    raised error keeps the model's intermediate tensors alive until a garbage collection
    (device memory, on a GPU). (A call a worker runs still keeps them until one: its error
    passes through the worker's outcome list.)"""
    model = KeepsItsActivation().eval()
    pad = PadSequences(dim=0, sizes=(8,)) if path == "padded" else None
    x = torch.randn(2, 3, 4) if pad else torch.randn(2, 4)
    gc.disable()
    try:
        with BatchedModule(model, workers=1, pad=pad) as batched:
            with pytest.raises(ValueError):
                batched(x)
            assert model.activation() is None
    finally:
        gc.enable()
