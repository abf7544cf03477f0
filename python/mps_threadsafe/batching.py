r"""BatchedModule: one model served to many threads, batched dynamically, on parallel streams.

Callers on any thread call ``batched(x)`` (blocking) or ``batched.submit(x)`` (a
``concurrent.futures.Future``) with one sample or a small batch; the batcher coalesces waiting
calls of one shape into batches of up to ``max_batch`` samples and runs up to ``workers``
batches at once, each on its own stream, and gives every caller its own rows of the result.

This file imports only torch and the standard library: the patched ``torch.mps`` ships the same
file (patches/0017), and ``mps_threadsafe.BatchedModule`` is this class. Devices: mps (patched
wheel), mps_sim and cpu; their runtimes order buffers used across streams, which the lanes rely
on (a device without that, such as cuda, would need events and record_stream: refused).

Note [Lanes]
A lane is one stream with at most one batch on it at a time; there are ``workers`` lanes and
as many worker threads. A batch ends with its stream's synchronize, so its result (or its
error) is known before any caller sees it. Lanes, not threads, are what run in parallel: a
batch may be run by a worker or by its own caller (Note [The caller runs its own batch]); at
most ``workers`` batches run at once.

Note [A lane's stream is its worker's own]
With thread safety on, the thread policy gives each thread a pool stream no other thread holds,
but a stream handed out by ``Stream()`` (round robin) is not held by anyone: the policy may
bind a caller thread to it later, and that thread's own work would then queue behind the
lane's batches and share their command buffers (and their GPU errors). So each worker takes
its lane's stream through the policy, as its own thread's stream, at start: no other thread
is bound to it while the batcher lives, as long as the pool (32 streams) is not exhausted
(then the policy shares streams, lanes' included: ``shared_stream_bindings``). With thread
safety off (every thread on the default stream, which would serialize the lanes) the lane
takes a stream of the pool with ``Stream()``.

Note [The caller runs its own batch]
A blocking call that finds nothing of its shape waiting, a lane free and no more calls in
flight than lanes in use (Note [How many lanes]) runs its call itself, on its own thread: handing the work to a worker and
waiting for it costs two thread switches and a Future (0.1-0.2 ms of CPython, much of it under
the GIL that every caller needs) and buys nothing when there is nobody to batch with. With
thread safety on it runs on its own thread's stream, as calling the model from that thread
would (a lane's stream would cost a stream switch and make every buffer cross streams); with
it off, that stream is the default one every thread shares, so it runs on the lane's. So up
to ``workers`` concurrent callers cost what calling the model from their own threads costs
(but for the batcher's own Python: Note [The lone call's path]), and a lone caller never
waits. Futures (``submit``) always go through the queue.
A blocking call that queues and so lets its group leave (Note [When a batch leaves]; the
oldest group that may) while a lane is free leads that batch itself, the same way (but on the
main thread, where a Ctrl-C would fail its batch-mates too): it runs the batch, its own call in it, on
its own thread, instead of waking a worker for it (``caller_led_batches``). A worker that
finishes a batch wakes another for what is left before it answers its callers (their
futures' done-callbacks may run for long).

Note [The lone call's path]
A call its caller runs alone costs the batcher's Python on top of the model's, under the GIL
that every caller needs: where the GIL is the limit (many callers of a small model), that
overhead is lost throughput in proportion to it. And it runs cold: after a model call's
synchronize the batcher's code and objects are out of the core's caches (on the 2-core VM,
_check right after a transformer call costs 30 us, the same call again 2.8 us). So this path is
written out for one call (_run_alone_here) instead of going through _compute and _finish,
which handle batches, pad rules and retries. It saves less than hoped: on the 2-core VM, mlp
on mps_sim, one thread, the old and this path interleaved in one process, per call CPU time
over the model called directly was +22-38 us for the old one and 3-5 us less for this one (a
bare prototype without the batcher's bookkeeping: +10-13 us). The rest is spread over the
checks, the lock and the counts, a few microseconds each.

Note [When a batch leaves]
Calls beyond that queue, grouped by shape, and free workers take them. A group leaves as soon
as it holds its fair share of its shape's calls in flight (accepted, not yet answered),
ceil(in flight / lanes in use) samples (at most ``max_batch``), or its oldest call has waited
``max_wait_ms``; among the groups that may leave, the one whose oldest call came first. In a
closed loop the callers of a finished batch come back within microseconds, and without the
fair share the first of them would leave alone on the lane that just freed, the rest
queueing behind it: batches would alternate between one call and all the others. A group
that cannot grow (a lone shape) has a fair share of its own calls and leaves at once; no group
waits behind another. ``max_wait_ms`` = 0 takes whatever is waiting at once.

Note [How many lanes]
More lanes run more batches at once, but each batch is one model call's Python under the GIL:
with many callers of a small model the GIL, not the streams, is the limit, and fewer lanes
(so larger batches: the fair share is of the lanes in use) give more samples per second; with
a large model on a parallel device more lanes do. Which one wins depends on the model, the
callers and the machine (on the 2-core VM, mlp on mps_sim at 16-64 clients: 8 lanes 5,400-9,300
samples/s, one lane 13,300-14,000), so with ``adaptive=True`` the batcher measures it as it
runs. A window (at least WINDOW_S, and WINDOW_BATCHES batches per lane in use) gives the
samples/s of the lanes in use; it starts again when the batcher goes from idle to busy (the
time before measured its callers, not its lanes). Now and then a trial runs with half (or
twice) as many lanes, measured over TRIAL_WINDOWS windows from the moment only its lanes are
busy (batches started before it do not count), and is kept only if it beat the lanes it
replaced by MARGIN or by twice the windows' own spread, whichever is larger (so that noise
alone rarely wins: a rule that kept more lanes unless they lost ratcheted up to every lane on
the 2-core VM's noisy windows, where one lane was twice as fast); else it is undone, and trials come less often (up to MAX_BACKOFF windows
apart) while they keep losing. Lanes in use bound the batches running at once, the calls a
caller may run itself and the fair share; a lane is free when fewer than that many are busy
(right after the tuner lowers it, more may still be busy, finishing). ``active_lanes`` in
stats() says where it is. Off by default: the lanes used then change with the machine's load,
and a fixed ``workers`` is what a caller who sized it expects.

Note [Waking one worker]
Every event that may let a group leave (a call queued, a lane freed, calls answered) wakes one
idle worker, and a worker that takes a batch while more could leave wakes the next: a worker
woken for nothing costs a thread switch and the GIL, which every caller needs, so waking them
all on every answer (as a notify_all would) taxes each call once per worker. A blocking call
waits on a lock of its own, released when its answer is set; a ``Future`` (``submit``) costs a
condition variable per call and is made only for the callers who asked for one. A blocking
call that times out (or is interrupted: Note [Ctrl-C]) before its batch starts is withdrawn
(``cancelled``) and never runs; one that times out while its batch runs raises TimeoutError,
and its result is dropped.

Note [Ctrl-C]
Python raises KeyboardInterrupt in the main thread between any two bytecodes that call or
return, so a Ctrl-C can land inside the batcher's own bookkeeping. Where the main thread waits
(a blocking call's answer), an interrupt withdraws the call if no batch took it yet: the
handler only sets `withdrawn` under the bare Lock (no call inside, so a second Ctrl-C cannot
stop it halfway) and the next _take_batch drops the call, counted as cancelled. The main thread
never leads a batch for others (Note [The caller runs its own batch]), and what it builds for a
call (its answer lock or future) is made before the lock is taken. A call the main thread
runs itself holds a lane: an interrupt anywhere in the bookkeeping around its model call
reaches __call__, which settles the call (_settle_interrupted: the lane freed, the call
counted as a failed batch of one) unless it was settled already (request.lane is cleared
first, under the lock, by whichever settles it); an interrupt inside the model, or once the
stream has work, synchronizes the stream first (_synchronize_for_error: the kernels' error
is dropped with the interrupted call, not left to the stream's next work). What is left: a
Ctrl-C in the few bytecodes of _accept's locked section, or between _accept and the wait of a
queued call, can still leave a call to run with nobody to answer (harmless: it is computed
and dropped) or, inside a locked section, the counts of one call half-updated (close() would
then wait for it); so can one that lands inside a timed-out call's _withdraw, whose queue and
counts change in several calls. Fully interrupt-proof bookkeeping would need the handler
itself deferred, which Python offers only process-wide (signal.signal).

Note [A failed batch is retried one call at a time]
When a batch of several calls fails (the model raises, or a kernel fails on the GPU: Metal
loses the whole command buffer), each of its calls is run again alone on the same lane, so an
error reaches exactly the calls that fail by themselves, as calling the model alone would, and
every caller gets an exception of its own. A call in no failed batch never sees the error
(``retried_alone`` counts the reruns).

Note [What a batch runs under]
A batch mixes callers, so it cannot run under any one caller's thread-local modes: it runs
under ``torch.no_grad()`` with inference mode and autocast off, whichever thread runs it (a
caller's autocast or inference_mode must not make its result, and its batch-mates', depend on
which thread ran the batch). Inputs that require grad are refused: the result could not carry
their gradient. Results are views of the batch's output rows (as ``torch.split`` returns);
``.clone()`` one to own its storage. A submitted call reads its inputs when its batch runs,
as an asynchronous CUDA call does: do not modify them before the future is done. A batch of
several calls runs on a concatenated copy of their inputs, so a model that writes its input in
place (``ReLU(inplace=True)`` as its first op) changes the caller's tensor only when its call
runs alone, as calling the model does: such a model is not for BatchedModule.

Note [Batches hold one shape]
Calls are grouped by each argument's dtype and sample shape (the shape after the batch
dimension), so a call of a shape or dtype nobody else uses runs alone: it can never fail
another caller's batch. With a pad rule (:class:`PadSequences`), samples of different lengths
share a batch padded to a bucket; a sample no bucket fits runs in its exact-shape group.

Note [What the model must return]
Tensors with the batch dimension first (rows of the batch, in call order), possibly in
tuples, lists, namedtuples and dicts, and None; anything else (an int, a string) would be one
value for the whole batch, so it is an error, for a batch of one too: whether a call fails
must not depend on whether it shared a batch. An output whose first dimension is not the batch
dimension cannot be told apart when its size happens to equal the batch's rows (as with
DataParallel's gather): such a model is not for BatchedModule.
"""

import atexit
import collections
import concurrent.futures
import contextlib
import copy
import os
import sys
import threading
import time
import weakref

import torch

__all__ = ["BatchedModule", "BatcherClosedError", "PadSequences"]

# The counters stats() reports (docs/stats.md).
_COUNTS = ("requests", "samples", "refused", "cancelled", "completed", "failed", "batches",
           "batches_failed", "retried_alone", "ran_alone", "caller_run_batches", "caller_led_batches")

# Queue waits and latencies kept for the percentiles in stats(): the latest this many calls.
STATS_WINDOW = 65536


class BatcherClosedError(RuntimeError):
    """A call to a BatchedModule after close() (or after the with-block that owned it)."""


# ---- Pad rules ---------------------------------------------------------------------------------


class PadSequences:
    r"""Lets samples of different lengths along one dimension share a batch.

    A sample whose length along ``dim`` (a sample dimension: 0 is the first one after the batch
    dimension) fits a bucket is padded with ``value`` to the smallest bucket that holds it;
    every output of the model that has the padded length along the same dimension is cut back
    to the sample's own length. Buckets: ``sizes`` (increasing lengths), or every multiple of
    ``multiple``. A sample longer than every bucket runs with the samples of its exact shape.

    Padding is right only if the padded positions cannot change the others (a per-position
    model, or one that is told where the padding is): ``mask_kwarg`` names a keyword argument
    of the model that receives a ``(batch, length)`` bool tensor, True at padded positions
    (PyTorch's ``key_padding_mask`` convention; ``"src_key_padding_mask"`` for
    ``nn.TransformerEncoderLayer``). A call that fits a bucket always runs padded to it, alone
    or not, so its result never depends on whether it shared a batch; every output of the model
    must keep the padded dimension (a per-position output), else the call fails.
    """

    def __init__(self, dim=0, sizes=None, multiple=None, value=0.0, mask_kwarg=None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"PadSequences: dim must be a sample dimension (an int >= 0, 0 is "
                             f"the first one after the batch dimension), got {dim!r}")
        if (sizes is None) == (multiple is None):
            raise ValueError("PadSequences: give exactly one of sizes= (bucket lengths) or "
                             "multiple= (pad to a multiple of it)")
        if sizes is not None:
            sizes = tuple(sizes)
            if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                for s in sizes) or list(sizes) != sorted(set(sizes)):
                raise ValueError(f"PadSequences: sizes must be increasing whole lengths >= 1, "
                                 f"got {sizes!r}")
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int)
                                     or multiple < 1):
            raise ValueError(f"PadSequences: multiple must be a whole number >= 1, got "
                             f"{multiple!r}")
        if mask_kwarg is not None and not (isinstance(mask_kwarg, str) and mask_kwarg.isidentifier()):
            raise ValueError(f"PadSequences: mask_kwarg must name a keyword argument, got "
                             f"{mask_kwarg!r}")
        self.dim, self.sizes, self.multiple = dim, sizes, multiple
        self.value, self.mask_kwarg = value, mask_kwarg

    def target(self, sample_shape):
        """The padded sample shape for `sample_shape`, or None when no bucket holds it."""
        if self.dim >= len(sample_shape):
            return None
        length = sample_shape[self.dim]
        if length == 0:
            return None
        if self.sizes is not None:
            bucket = next((s for s in self.sizes if s >= length), None)
            if bucket is None:
                return None
        else:
            bucket = -(-length // self.multiple) * self.multiple
        return tuple(sample_shape[:self.dim]) + (bucket,) + tuple(sample_shape[self.dim + 1:])

    def pad(self, x, target):
        """x (rows, *sample_shape) padded at the end of the dimension to (rows, *target)."""
        missing = target[self.dim] - x.shape[self.dim + 1]
        if missing == 0:
            return x
        # F.pad's pairs run from the last dimension backwards.
        pairs = [0, 0] * (x.dim() - 1 - (self.dim + 1)) + [0, missing]
        return torch.nn.functional.pad(x, pairs, value=self.value)

    def model_kwargs(self, lengths, target, device):
        """The keyword arguments a padded batch passes to the model (the padding mask)."""
        if self.mask_kwarg is None:
            return {}
        positions = torch.arange(target[self.dim])
        mask = positions.unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
        return {self.mask_kwarg: mask.to(device)}

    def unpad(self, y, sample_shape, target, input_dims):
        """A caller's rows of one output, cut back to its own length. Every tensor output must
        carry the padded dimension where the input has it: same number of dimensions, the
        bucket's length there (a pooled output, or one whose size there only happens to be the
        bucket's, would be cut wrongly: it is an error, whether or not the call shared a
        batch). The cut rows are copied (contiguous, as the model's own output)."""
        axis = self.dim + 1
        if y.dim() != input_dims or y.shape[axis] != target[self.dim]:
            raise RuntimeError(
                f"PadSequences(dim={self.dim}): the model returned a tensor of shape "
                f"{tuple(y.shape)} for an input padded to {tuple(target)}; a pad rule needs every "
                f"output to keep the padded dimension (length {target[self.dim]} at dimension "
                f"{axis} of {input_dims}) to cut it back: pooled outputs cannot be padded")
        if sample_shape[self.dim] == target[self.dim]:
            return y
        return y.narrow(axis, 0, sample_shape[self.dim]).contiguous()

    def __repr__(self):
        buckets = f"sizes={self.sizes}" if self.sizes is not None else f"multiple={self.multiple}"
        return (f"PadSequences(dim={self.dim}, {buckets}, value={self.value!r}, "
                f"mask_kwarg={self.mask_kwarg!r})")


# ---- Requests and lanes ------------------------------------------------------------------------


class _Request:
    """One accepted call. A queued call is answered through its future (submit) or, for a
    blocking call, through `answered`: a lock held until its result or error is set (a
    Future's condition variable costs a blocking caller several microseconds under the GIL
    for nothing it uses)."""
    __slots__ = ("args", "rows", "sample_shape", "key", "on_device", "future", "answered",
                 "result", "error", "withdrawn", "lane", "batch", "accepted", "started")

    def __init__(self, args, rows, sample_shape, key, on_device=False):
        self.args, self.rows, self.sample_shape, self.key = args, rows, sample_shape, key
        self.on_device = on_device  # every argument already on the batcher's device
        self.future = None  # a submitted call's, made when it queues
        self.answered = None  # a queued blocking call's
        self.result = self.error = None
        self.withdrawn = False  # a blocking call that timed out before its batch
        self.lane = None  # set when its caller runs it (Note [The caller runs its own batch])
        self.batch = None  # the batch it leads, when it runs one of queued calls
        self.accepted = time.perf_counter()
        self.started = None

    def answer(self, result, error):
        if self.future is None:
            self.result, self.error = result, error
            self.answered.release()
            return
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # the caller set its future itself; the others still get theirs


class _Lane:
    __slots__ = ("index", "stream", "workers_own", "batches")

    def __init__(self, index):
        self.index, self.stream, self.batches = index, None, 0
        # Whether the stream is its worker thread's current stream, so the worker runs batches
        # on it without a stream switch (Note [A lane's stream is its worker's own]).
        self.workers_own = False


class _Alone:
    """A group key no other call shares (a zero-row call: the model may not take an empty
    batch, and that must not fail anyone else's)."""
    __slots__ = ()


def _tree_map(fn, value):
    """fn on every tensor of a model output (Note [What the model must return]); None stays."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if value is None:
        return None
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_tree_map(fn, v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        mapped = copy.copy(value)  # keeps a dict subclass (defaultdict, OrderedDict) as it is
        for key, item in value.items():
            mapped[key] = _tree_map(fn, item)
        return mapped
    raise RuntimeError(
        f"BatchedModule: the model returned a {type(value).__name__}; only tensors (batch "
        "dimension first), None, and tuples, lists and dicts of them can be split between the "
        "callers of a batch (Note [What the model must return])")


def _tree_tensors(value):
    found = []
    _tree_map(found.append, value)
    return found


def _percentile(values, q):
    """The q-th percentile (0..100) by linear interpolation; None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


_live_batchers = weakref.WeakSet()


@atexit.register
def _close_all_at_exit():
    # Worker threads are daemons (a batcher nobody closed must not hang interpreter exit); what
    # they accepted is still run before the interpreter goes.
    for batcher in list(_live_batchers):
        batcher.close(wait=True)


def _forget_all_in_child():
    for batcher in list(_live_batchers):
        batcher._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_in_child)

SUPPORTED_DEVICE_TYPES = ("cpu", "mps", "mps_sim")


# ---- The batcher -------------------------------------------------------------------------------


class BatchedModule:
    r"""Serves ``model`` to many threads: calls are batched dynamically and run on ``workers``
    parallel streams.

    Args:
        model: an ``nn.Module`` in eval mode (or any callable) whose inputs and outputs have the
            batch dimension first and whose samples do not depend on each other (Note [What the
            model must return]).
        max_batch (int): the most samples one batch holds (default 8). A call with more rows
            runs alone.
        max_wait_ms (float): the longest a queued call waits for its batch to reach its fair
            share of the calls in flight (default 1; 0: take whatever is waiting at once; Note
            [When a batch leaves]). A lone caller never waits.
        workers (int): lanes (streams) that run batches at once, one worker thread each
            (default 2).
        adaptive (bool): use between 1 and ``workers`` lanes, as many as give the most samples
            per second, measured as the batcher runs (Note [How many lanes]; default False:
            all of them).
        device: where the model runs (default: the device of its first parameter or buffer,
            else cpu): cpu, mps or mps_sim. Inputs may be on this device or on the cpu.
        pad: a pad rule (:class:`PadSequences`) for single-input models, so samples of
            different lengths can share a batch.
        output_device: move each batch's output there once before it is split (e.g. "cpu" for a
            server that sends results on); default: where the model puts it.

    ``batched(*tensors, timeout=None)`` returns what ``model(*tensors)`` returns, computed in a
    batch; ``batched.submit(*tensors)`` returns a ``concurrent.futures.Future`` of it. Both
    raise ``TypeError``/``ValueError`` for a bad input before it joins a batch, and
    :class:`BatcherClosedError` after :meth:`close`. An error reaches exactly the calls that
    fail (Note [A failed batch is retried one call at a time]). ``stats()`` returns the counters
    (docs/stats.md).
    """

    def __init__(self, model, max_batch=8, max_wait_ms=1.0, workers=2, *, device=None, pad=None,
                 output_device=None, adaptive=False):
        if not callable(model):
            raise TypeError(f"BatchedModule: model must be callable, got {type(model).__name__}")
        self.max_batch = _whole("max_batch", max_batch)
        self.workers = _whole("workers", workers)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or \
                not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"BatchedModule: max_wait_ms must be a number of milliseconds >= 0, "
                             f"got {max_wait_ms!r}")
        if pad is not None and not all(callable(getattr(pad, name, None)) for name in
                                       ("target", "pad", "model_kwargs", "unpad")):
            raise TypeError("BatchedModule: pad must be a pad rule (PadSequences, or an object "
                            "with target, pad, model_kwargs and unpad)")
        self._modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
        self._refuse_training()
        self.model = model
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.pad = pad
        model_device = _model_device(model)
        self.device = model_device if device is None else torch.device(device)
        if self.device.type not in SUPPORTED_DEVICE_TYPES:
            raise ValueError(f"BatchedModule: device {self.device} is not supported (cpu, mps, "
                             "mps_sim: their runtimes order buffers used across streams)")
        if self.device.type != "cpu" and self.device.index is None:
            self.device = torch.device(self.device.type, 0)
        if isinstance(model, torch.nn.Module) and any(
                t.device != self.device for t in (*model.parameters(), *model.buffers())):
            raise ValueError(f"BatchedModule: the model's parameters are on {model_device}, not "
                             f"on device={self.device}; move the model first (model.to(...))")
        self.output_device = None if output_device is None else torch.device(output_device)
        self._param_dtype = _floating_parameter_dtype(model)
        self._device_module = _device_module(self.device)
        if self.workers > 1 and self.device.type != "cpu" and self._device_module is None:
            raise ValueError(
                f"BatchedModule: workers={self.workers} needs streams, and this torch has no "
                f"stream API for {self.device.type} (torch.{self.device.type}.Stream / .stream): "
                "install the thread-safe build, or use workers=1")
        self._lanes = [_Lane(i) for i in range(self.workers)]
        self._free_lanes = list(reversed(self._lanes))
        if not isinstance(adaptive, bool):
            raise TypeError(f"BatchedModule: adaptive must be True or False, got {adaptive!r}")
        # Lanes batches may use now (Note [How many lanes]): all of them, or the tuner's choice.
        self._tuner = _LaneTuner(self.workers, time.perf_counter()) if adaptive else None
        self._active_lanes = self.workers

        # One lock; workers wait on _cond (woken one at a time: Note [Waking one worker]),
        # close() on _drained.
        self._lock = lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._drained = threading.Condition(lock)
        self._pending = collections.OrderedDict()  # group key -> deque of _Request
        self._pending_rows = {}  # group key -> samples waiting
        self._pending_count = 0
        self._in_flight = {}  # group key -> calls accepted, not answered
        self._in_flight_total = 0
        self._closed = False
        self._forked = False
        self._pid = os.getpid()
        self._local = threading.local()  # .busy: this thread is running one of our batches
        self._counts = dict.fromkeys(_COUNTS, 0)  # a plain dict: the hot path counts cheaply
        self._batch_sizes = collections.Counter()
        self._is_threadsafe = getattr(self._device_module, "is_threadsafe", None)
        # Never leads a batch: a Ctrl-C there would fail its batch-mates' calls too.
        self._main_thread = threading.main_thread()
        self._autocast_types = ("cpu",) if self.device.type == "cpu" else ("cpu", self.device.type)
        self._max_lanes_busy = 0
        self._waits = collections.deque(maxlen=STATS_WINDOW)
        self._latencies = collections.deque(maxlen=STATS_WINDOW)

        # Each worker takes its lane's stream on its own thread (Note [A lane's stream is its
        # worker's own]) before the batcher accepts a call.
        started = [threading.Event() for _ in self._lanes]
        failures = []
        self._threads = [threading.Thread(target=self._worker, args=(lane, started[lane.index],
                                                                     failures),
                                          name=f"BatchedModule-worker-{lane.index}", daemon=True)
                         for lane in self._lanes]
        for thread in self._threads:
            thread.start()
        for event in started:
            event.wait()
        if failures:
            self.close()
            raise failures[0]
        _live_batchers.add(self)

    # ---- calls ---------------------------------------------------------------------------------

    def __call__(self, *args, timeout=None):
        """What ``model(*args)`` returns, computed in a batch. Blocks; ``timeout`` (seconds)
        bounds the wait for a batch (TimeoutError; a call not yet in a batch is withdrawn)."""
        self._check_process()
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, (int, float)) or not timeout >= 0):
            raise ValueError(f"BatchedModule: timeout must be a number of seconds >= 0 or None, "
                             f"got {timeout!r}")
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            timeout = None  # a lock cannot wait longer (OverflowError), nor an infinite time
        if getattr(self._local, "busy", False):
            raise RuntimeError("BatchedModule: a blocking call from inside its own batch (the "
                               "model, or a future's done-callback) would wait for the lane it "
                               "holds; call the model directly, or use submit()")
        request = self._accept(args, blocking=True)
        if request.lane is not None:  # Note [The caller runs its own batch]
            if request.batch is None:
                try:
                    return self._run_here(request)
                except BaseException:
                    # A Ctrl-C in the bookkeeping around the model call (Note [Ctrl-C]) would
                    # otherwise leave the lane and the call in flight forever.
                    self._settle_interrupted(request)
                    raise
            interrupt = self._run_queued(request.lane, request.batch,
                                         on_own_stream=self._on_own_stream())
            if interrupt is not None:  # this thread's to raise; its batch-mates get an error
                raise interrupt
        try:
            answered = request.answered.acquire(timeout=-1 if timeout is None else timeout)
        except BaseException:  # a Ctrl-C while waiting: a call no batch took yet never runs
            # The Lock's own `with` and no call inside, so that a second Ctrl-C cannot land
            # halfway through (Note [Ctrl-C]): the flag alone; _take_batch drops the call.
            with self._lock:
                if request.started is None:
                    request.withdrawn = True
            raise
        if not answered:
            with self._cond:
                if request.started is None:
                    self._withdraw(request)
            if not request.answered.acquire(blocking=False):  # not answered meanwhile
                raise concurrent.futures.TimeoutError(
                    f"BatchedModule: no result within {timeout} s"
                    + ("" if request.withdrawn else " (the call still runs; its result is dropped)"))
        if request.error is not None:
            error, request.error = request.error, None
            try:
                raise error
            finally:
                error = None  # no cycle through the traceback (as in _run_alone_here)
        return request.result

    def submit(self, *args):
        """A ``concurrent.futures.Future`` of ``model(*args)`` computed in a batch. Bad input
        raises here, not through the future. The inputs are read when the batch runs."""
        self._check_process()
        return self._accept(args, blocking=False).future

    def close(self, wait=True):
        """Refuses new calls (BatcherClosedError) and runs every call already accepted; with
        ``wait``, returns once they are all answered and the workers have exited. Called from
        inside the batcher's own model or a done-callback it does not wait (it would wait for
        itself)."""
        if self._forked or self._pid != os.getpid():
            return
        inside = getattr(self._local, "busy", False)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if wait and not inside:
                while self._in_flight_total:
                    self._drained.wait()
        if wait and not inside:
            for thread in self._threads:
                thread.join()
            # Only once everything accepted is answered: a batcher closed without waiting is
            # still drained at interpreter exit (its workers are daemons).
            _live_batchers.discard(self)

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(wait=True)
        return False

    def __repr__(self):
        return (f"BatchedModule({type(self.model).__name__}, max_batch={self.max_batch}, "
                f"max_wait_ms={self.max_wait_s * 1e3:g}, workers={self.workers}, "
                f"device={self.device}{', adaptive' if self._tuner is not None else ''}"
                f"{', closed' if self._closed else ''})")

    # ---- accepting a call ----------------------------------------------------------------------

    def _check_process(self):
        if self._forked or self._pid != os.getpid():
            # Checked before the lock: it may have been held by another thread at fork().
            raise RuntimeError("BatchedModule: this process is a fork() child of the one that "
                               "made the batcher, and its worker threads did not survive fork(); "
                               "use the batcher in its own process (a process started with "
                               "'spawn' can make one of its own)")

    def _accept(self, args, blocking):
        """Checks the call and admits it: the returned request either has a lane to run on
        here (request.lane: Note [The caller runs its own batch]) or is queued (a blocking call
        waits on request.answered, a submitted one has request.future)."""
        try:
            rows, sample_shape, key, on_device = self._check(args)
        except (TypeError, ValueError):
            with self._cond:
                self._counts["refused"] += 1
            raise
        request = _Request(args, rows, sample_shape, key, on_device)
        # Made before the lock: fewer calls between the counts and the queue (Note [Ctrl-C]).
        if blocking:
            answered = threading.Lock()
            answered.acquire()
        else:
            future = concurrent.futures.Future()
        with self._lock:  # the Lock itself: a Condition's `with` is Python code
            if self._closed:
                self._counts["refused"] += 1
                raise BatcherClosedError("BatchedModule is closed: it runs the calls it accepted "
                                         "before close() and refuses new ones")
            counts = self._counts
            counts["requests"] += 1
            counts["samples"] += rows
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._in_flight_total += 1
            if self._in_flight_total == 1 and self._tuner is not None:
                self._tuner.restart(request.accepted)  # Note [How many lanes]: idle until now
            if (blocking and self._lane_available() and key not in self._pending
                    and self._in_flight_total <= self._active_lanes):
                request.started = request.accepted
                counts["caller_run_batches"] += 1
                request.lane = self._claim_lane()
                return request
            if blocking:
                request.answered = answered
            else:
                request.future = future
            queue = self._pending.get(key)
            if queue is None:
                queue = self._pending[key] = collections.deque()
                self._pending_rows[key] = 0
            queue.append(request)
            self._pending_rows[key] += rows
            self._pending_count += 1
            if (blocking and self._lane_available() and self._pending_rows[key] <= self.max_batch
                    and threading.current_thread() is not self._main_thread
                    and self._choose_group()[0] == key):
                request.batch = self._take_batch(key)  # its own call included: the newest
                request.lane = self._claim_lane()
                counts["caller_led_batches"] += 1
            self._wake_a_worker()
        return request

    def _check(self, args):
        """(rows, sample shape of the first argument, group key, whether every argument is on
        the device), or TypeError/ValueError with what is wrong (Note [Batches hold one
        shape])."""
        if not args:
            raise TypeError("BatchedModule: call it with the model's input tensor(s), batch "
                            "dimension first")
        if self.pad is not None and len(args) != 1:
            raise TypeError(f"BatchedModule: a pad rule batches single-input calls; this call "
                            f"has {len(args)} arguments")
        if getattr(self.model, "training", False):
            raise ValueError(_TRAINING_MESSAGE.format(where=" (the model itself)"))
        rows = None
        parts = []
        on_device = True
        # Every call passes here: each tensor property is read once (each read builds an object).
        for position, arg in enumerate(args):
            if not isinstance(arg, torch.Tensor):
                raise TypeError(f"BatchedModule: argument {position} must be a tensor, got "
                                f"{type(arg).__name__}")
            if arg.layout != torch.strided:
                raise TypeError(f"BatchedModule: argument {position} is a {arg.layout} tensor; "
                                "only dense (strided) tensors can be batched")
            device = arg.device
            if device != self.device:
                on_device = False
                if device.type != "cpu":
                    raise ValueError(f"BatchedModule: argument {position} is on {device}; the "
                                     f"model runs on {self.device} (give it tensors on "
                                     f"{self.device} or on the cpu)")
            shape = arg.shape
            if not shape:
                raise ValueError(f"BatchedModule: argument {position} is 0-dimensional; inputs "
                                 "need the batch dimension first (x.unsqueeze(0) for one sample)")
            if arg.requires_grad:
                raise ValueError(f"BatchedModule: argument {position} requires grad; the model "
                                 "runs without autograd (torch.no_grad), so the result could not "
                                 "carry its gradient: pass x.detach(), or call the model itself "
                                 "to train")
            dtype = arg.dtype
            if (position == 0 and self._param_dtype is not None and dtype.is_floating_point
                    and dtype != self._param_dtype):
                raise TypeError(f"BatchedModule: argument {position} is {dtype}, the model's "
                                f"parameters are {self._param_dtype}")
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise ValueError(f"BatchedModule: argument {position} has {shape[0]} rows, "
                                 f"argument 0 has {rows}: every argument needs the same batch "
                                 "size")
            parts.append((dtype, tuple(shape)[1:]))  # slicing the torch.Size costs more
        sample_shape = parts[0][1]
        if rows == 0:
            return rows, sample_shape, _Alone(), on_device
        if self.pad is not None:
            target = self.pad.target(sample_shape)
            if target is not None:
                return rows, sample_shape, ("padded", parts[0][0], tuple(target)), on_device
        return rows, sample_shape, tuple(parts), on_device

    def _refuse_training(self):
        """Every module in eval mode (checked at construction and for every batch: one
        submodule switched to train() later would mix the samples of its batch)."""
        for index, module in enumerate(self._modules):
            if module.training:
                where = "the model itself" if index == 0 else type(module).__name__
                raise ValueError(_TRAINING_MESSAGE.format(where=f" ({where})"))

    # ---- lanes and workers ---------------------------------------------------------------------

    def _claim_lane(self, preferred=None):
        free = self._free_lanes
        if preferred is not None and preferred in free:
            free.remove(preferred)
            lane = preferred
        else:
            lane = free.pop()
        busy = len(self._lanes) - len(self._free_lanes)
        self._max_lanes_busy = max(self._max_lanes_busy, busy)
        return lane

    def _release_lane(self, lane):
        lane.batches += 1
        self._free_lanes.append(lane)

    def _busy_lanes(self):
        return len(self._lanes) - len(self._free_lanes)

    def _lane_available(self):
        """Under the lock: whether a batch may start now (a lane is free, and fewer than the
        lanes in use are busy: Note [How many lanes])."""
        return len(self._lanes) - len(self._free_lanes) < self._active_lanes

    def _wake_a_worker(self):
        """Under the lock, after anything that may let a group leave (a call queued, a lane
        freed, calls answered: a smaller fair share). Note [Waking one worker]."""
        if self._pending_count and self._lane_available():
            self._cond.notify()

    def _choose_group(self):
        """(the group key that may leave now, None) or (None, seconds until one may): Note
        [When a batch leaves]."""
        now = time.perf_counter()
        best, wait = None, None
        for key, queue in self._pending.items():
            ready, left = self._may_leave(key, now)
            if ready:
                if best is None or queue[0].accepted < self._pending[best][0].accepted:
                    best = key
            elif wait is None or left < wait:
                wait = left
        return best, wait

    def _may_leave(self, key, now):
        """(whether group `key` may leave now, seconds until its max_wait runs out): Note
        [When a batch leaves]."""
        left = self._pending[key][0].accepted + self.max_wait_s - now
        fair_share = min(self.max_batch, -(-self._in_flight.get(key, 0) // self._active_lanes))
        return (self.max_wait_s == 0 or self._closed or isinstance(key, _Alone)
                or self._pending_rows[key] >= fair_share or left <= 0), left

    def _withdraw(self, request):
        """Under the lock: a blocking call that timed out before a batch took it leaves its
        queue now, so that it no longer counts as pending nor towards its group's fair share."""
        key = request.key
        queue = self._pending[key]
        queue.remove(request)
        self._pending_count -= 1
        self._pending_rows[key] -= request.rows
        if not queue:
            del self._pending[key]
            del self._pending_rows[key]
        request.withdrawn = True
        self._counts["cancelled"] += 1
        self._answered(key)
        self._wake_a_worker()  # a smaller fair share may let its group leave

    def _take_batch(self, key):
        """Up to max_batch samples of the group's calls, oldest first (under the lock);
        cancelled futures are dropped. May be empty."""
        queue = self._pending[key]
        batch, rows = [], 0
        now = time.perf_counter()
        while queue and (not batch or rows + queue[0].rows <= self.max_batch):
            request = queue.popleft()
            self._pending_count -= 1
            self._pending_rows[key] -= request.rows
            if request.future is None:
                running = not request.withdrawn  # a Ctrl-C in its caller's wait
            else:
                try:
                    running = request.future.set_running_or_notify_cancel()
                except RuntimeError:  # the caller set the future itself: nothing to run for it
                    running = False
            if not running:
                self._counts["cancelled"] += 1
                self._answered(request.key)
                continue
            request.started = now
            batch.append(request)
            rows += request.rows
        if not queue:
            del self._pending[key]
            del self._pending_rows[key]
        return batch

    def _answered(self, key, calls=1):
        """Under the lock: `calls` calls of group `key` are answered (or withdrawn). The caller
        wakes a worker if that may let a group leave (a smaller fair share)."""
        left = self._in_flight[key] - calls
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]
        self._in_flight_total -= calls
        if self._closed and not self._in_flight_total:
            self._drained.notify_all()
            self._cond.notify_all()  # every idle worker exits now

    def _take_lane_stream(self):
        """(The stream of this worker's lane, whether it is the worker thread's current stream):
        Note [A lane's stream is its worker's own]."""
        module = self._device_module
        if module is None:
            return None, False
        is_threadsafe = getattr(module, "is_threadsafe", None)
        current, default = (getattr(module, name, None) for name in ("current_stream",
                                                                     "default_stream"))
        if is_threadsafe is not None and current is not None and default is not None \
                and is_threadsafe():
            own = current()  # binds this thread to a pool stream of its own
            if own.stream_id != default().stream_id:
                return own, True
        return module.Stream(), False

    def _worker(self, lane, started, failures):
        try:
            lane.stream, lane.workers_own = self._take_lane_stream()
        except Exception as error:  # raised by the constructor
            failures.append(error)
            return
        finally:
            started.set()
        self._local.busy = False
        with self._cond:
            while True:
                if not self._pending_count:
                    if self._closed:
                        return
                    self._cond.wait()
                    continue
                if not self._lane_available():
                    self._cond.wait()
                    continue
                key, wait = self._choose_group()
                if key is None:
                    self._cond.wait(wait)
                    continue
                batch = self._take_batch(key)
                if not batch:
                    continue
                lane_for_batch = self._claim_lane(preferred=lane)
                self._wake_a_worker()  # another group may leave too, on another lane
                self._cond.release()
                try:
                    self._run_queued(lane_for_batch, batch,
                                     on_own_stream=lane_for_batch is lane and lane.workers_own
                                     and self._on_own_stream(),  # thread safety may be off now
                                     by_worker=True)
                except Exception as error:  # a bug of ours: say so, and keep the worker alive
                    print(f"BatchedModule worker: {type(error).__name__}: {error}",
                          file=sys.stderr)
                finally:
                    self._cond.acquire()

    # ---- running a batch -----------------------------------------------------------------------

    def _on_own_stream(self):
        """Whether a caller runs on its own current stream: with thread safety on, the policy
        gave its thread a stream no other thread holds (Note [The caller runs its own batch])."""
        return self._is_threadsafe is not None and bool(self._is_threadsafe())

    def _run_here(self, request):
        """A caller runs its own call on its thread (Note [The caller runs its own batch])."""
        if self.pad is None:
            return self._run_alone_here(request)
        lane = request.lane
        self._local.busy = True
        try:
            result, error = self._compute(lane, [request], self._on_own_stream())[0], None
        except Exception as failure:
            result, error = None, failure
        except BaseException:  # KeyboardInterrupt or SystemExit: this thread's to raise
            self._finish(lane, [request], failed=1)
            raise
        finally:
            self._local.busy = False
        self._finish(lane, [request], failed=0 if error is None else 1)
        if error is not None:
            try:
                raise error
            finally:
                error = None  # no cycle through the traceback (as in _run_alone_here)
        return result

    def _run_alone_here(self, request):
        """_run_here without a pad rule: _compute and _finish for one call, written out (Note
        [The lone call's path]). Same semantics: the modes of Note [What a batch runs under],
        the checks of Note [What the model must return], the stream synchronized before any
        error leaves, the call counted as a batch of one."""
        lane, local = request.lane, self._local
        local.busy = True
        stream = error = None
        try:
            self._refuse_training()
            module = self._device_module
            if module is None:
                stream_context = None
            elif self._on_own_stream():
                stream, stream_context = module.current_stream(), None
            else:
                stream = lane.stream
                stream_context = module.stream(stream)
            try:
                modes = _enter_batch_modes(self._autocast_types)
                try:
                    if stream_context is not None:
                        stream_context.__enter__()
                    try:
                        args = request.args if request.on_device else \
                            [a.to(self.device) for a in request.args]
                        output = self._checked_output(self.model(*args), request.rows)
                    finally:
                        if stream_context is not None:
                            stream_context.__exit__(None, None, None)
                finally:
                    _exit_batch_modes(modes)
            except BaseException:
                _synchronize_for_error(stream)  # its kernels' error belongs to this call too
                raise
            if stream is not None:
                stream.synchronize()
        except Exception as failure:
            error = failure
        except BaseException:  # KeyboardInterrupt or SystemExit: this thread's to raise
            local.busy = False
            self._settle_alone(request, True, time.perf_counter())
            raise
        local.busy = False
        self._settle_alone(request, error is not None, time.perf_counter())
        if error is not None:
            try:
                raise error
            finally:
                error = None  # the traceback holds this frame: no cycle keeping the model's
                # intermediate tensors alive until a garbage collection
        return output

    def _settle_interrupted(self, request):
        """A caller-run call that a KeyboardInterrupt or SystemExit stopped before it was
        settled (its lane freed, its call answered): settled now, as a failed batch of one.
        Does nothing for a settled one."""
        self._settle_alone(request, failed=True, done=None)

    def _settle_alone(self, request, failed, done):
        """Once per caller-run call (request.lane is cleared first, under the lock; a settled
        call is left alone): its lane is free again and it is counted as a batch of one. `done`:
        when it finished (its latency, and a batch for the tuner); None for an interrupted
        call, whose end nobody measured."""
        with self._lock:
            lane = request.lane
            if lane is None:
                return
            request.lane = None
            lane.batches += 1
            self._free_lanes.append(lane)
            counts = self._counts
            counts["batches"] += 1
            counts["ran_alone"] += 1
            self._batch_sizes[request.rows] += 1
            if failed:
                counts["batches_failed"] += 1
                counts["failed"] += 1
            else:
                counts["completed"] += 1
            if done is not None:
                self._waits.append(0.0)  # it started when it was accepted
                self._latencies.append(done - request.accepted)
                if self._tuner is not None:
                    self._active_lanes = self._tuner.batch_done(request.rows, done,
                                                                self._busy_lanes())
            self._answered(request.key)
            self._wake_a_worker()

    def _run_queued(self, lane, batch, on_own_stream, by_worker=False):
        """A worker (or a leading caller) runs a batch of queued calls, frees the lane, then
        answers the calls (futures' done-callbacks run after the lane is free). Returns the
        KeyboardInterrupt or SystemExit that stopped the batch, if one did."""
        # Busy through the answers too: done-callbacks run here, on this worker's thread.
        self._local.busy = True
        try:
            try:
                outcomes = self._outcomes(lane, batch, on_own_stream)
            except Exception as error:  # a bug of ours: the batch's callers hear of it, and
                outcomes = _Outcomes((None, error) for _ in batch)  # the lane is given back
                outcomes.batch_failed = True
            failed = sum(error is not None for _, error in outcomes)
            # Wakes a worker even from a worker: its done-callbacks below may run for long.
            self._finish(lane, batch, failed, batch_failed=outcomes.batch_failed,
                         answered=False)
            escaped = None
            try:
                for request, (result, error) in zip(batch, outcomes):
                    try:
                        request.answer(result, error)
                    except BaseException as raised:  # a done-callback's SystemExit, Ctrl-C
                        escaped = escaped or raised  # the rest of the batch is still answered
            finally:
                # In flight until answered: close() returns only once every answer is out,
                # whichever thread (a worker or a leading caller) delivers it.
                with self._lock:
                    for request in batch:
                        self._answered(request.key)
                    self._wake_a_worker()
            if escaped is not None and by_worker:
                print(f"BatchedModule worker: a done-callback raised {type(escaped).__name__}",
                      file=sys.stderr)
                escaped = None
            return outcomes.interrupt or escaped
        finally:
            self._local.busy = False

    def _outcomes(self, lane, batch, on_own_stream):
        """(result, error) per call (Note [A failed batch is retried one call at a time]). A
        worker never dies of a call: a BaseException becomes a RuntimeError for its callers."""
        outcomes = _Outcomes()
        try:
            outcomes.extend((result, None)
                            for result in self._compute(lane, batch, on_own_stream))
            return outcomes
        except Exception as error:
            if len(batch) == 1:
                outcomes.append((None, error))
                outcomes.batch_failed = True
                return outcomes
        except BaseException as interrupt:
            outcomes.extend((None, _interrupted(interrupt)) for _ in batch)
            outcomes.batch_failed = True
            outcomes.interrupt = interrupt
            return outcomes
        outcomes.batch_failed = True
        for request in batch:
            try:
                outcomes.append((self._compute(lane, [request], on_own_stream)[0], None))
            except Exception as error:
                outcomes.append((None, error))
            except BaseException as interrupt:
                outcomes.append((None, _interrupted(interrupt)))
                outcomes.interrupt = interrupt
        with self._cond:
            self._counts["retried_alone"] += len(batch)
        return outcomes

    def _compute(self, lane, batch, on_own_stream):
        """Runs the batch's calls as one model call and returns each call's output, once its
        stream has finished them (Notes [What a batch runs under], [What the model must
        return]). If the model or the split raises, the stream is synchronized first."""
        self._refuse_training()
        device = self.device
        stream = lane.stream
        if on_own_stream:
            stream = self._device_module.current_stream()
            stream_context = _NO_CONTEXT
        elif stream is not None:
            stream_context = self._device_module.stream(stream)
        else:
            stream_context = _NO_CONTEXT
        first = batch[0]
        padded = self.pad is not None and isinstance(first.key, tuple) and \
            first.key[:1] == ("padded",)
        try:
            with _BatchModes(self._autocast_types), stream_context:
                kwargs = {}
                if padded:
                    target = first.key[2]
                    inputs = [self.pad.pad(r.args[0].to(device), target) for r in batch]
                    inputs = (inputs[0] if len(inputs) == 1 else torch.cat(inputs),)
                    lengths = [r.sample_shape[self.pad.dim] for r in batch for _ in range(r.rows)]
                    kwargs = self.pad.model_kwargs(lengths, target, device)
                elif len(batch) == 1:
                    inputs = first.args if first.on_device else [a.to(device) for a in first.args]
                else:
                    inputs = tuple(torch.cat([r.args[i].to(device) for r in batch])
                                   for i in range(len(first.args)))
                output = self._checked_output(
                    self.model(*inputs, **kwargs),
                    first.rows if len(batch) == 1 else sum(r.rows for r in batch))
                if padded:
                    dims = inputs[0].dim()
                    results = [self._rows(output, batch, i, lambda t, r=r: self.pad.unpad(
                        t, r.sample_shape, target, dims)) for i, r in enumerate(batch)]
                elif len(batch) == 1:
                    results = [output]  # exactly what the model returned for this call alone
                else:
                    results = [self._rows(output, batch, i) for i in range(len(batch))]
        except BaseException:
            # What the batch encoded before it failed finishes first: an error of its kernels
            # belongs to this batch, not to the next one on the stream.
            _synchronize_for_error(stream)
            raise
        if stream is not None:
            stream.synchronize()  # the batch's error, if any, belongs to this batch
        return results

    def _checked_output(self, output, rows):
        """The model's output for a batch of `rows` samples, on output_device if one is set;
        RuntimeError unless every tensor in it has the batch dimension first (for a batch of
        one too: Note [What the model must return])."""
        if self.output_device is not None:
            output = _tree_map(lambda t: t.to(self.output_device), output)
        for tensor in (output,) if isinstance(output, torch.Tensor) else _tree_tensors(output):
            if tensor.dim() == 0 or tensor.shape[0] != rows:
                raise RuntimeError(
                    f"BatchedModule: the model returned a tensor of shape {tuple(tensor.shape)} "
                    f"for a batch of {rows} samples; every output needs the batch dimension "
                    "first to be split between callers")
        return output

    @staticmethod
    def _rows(output, batch, index, then=None):
        start = sum(r.rows for r in batch[:index])
        rows = slice(start, start + batch[index].rows)
        if then is None:
            return _tree_map(lambda t: t[rows], output)
        return _tree_map(lambda t: then(t[rows]), output)

    def _finish(self, lane, batch, failed, batch_failed=None, answered=True):
        """Under the lock: the batch's lane is free again, and its calls are counted as
        answered (`answered`), or will be once their answers are delivered."""
        done = time.perf_counter()
        with self._lock:
            self._release_lane(lane)
            for request in batch:
                request.lane = None  # settled (a caller-run call: _settle_interrupted skips it)
            counts = self._counts
            counts["batches"] += 1
            self._batch_sizes[batch[0].rows if len(batch) == 1 else sum(r.rows for r in batch)] += 1
            if len(batch) == 1:
                counts["ran_alone"] += 1
            if failed if batch_failed is None else batch_failed:
                counts["batches_failed"] += 1
            counts["failed"] += failed
            counts["completed"] += len(batch) - failed
            for request in batch:
                self._waits.append(request.started - request.accepted)
                self._latencies.append(done - request.accepted)
                if answered:
                    self._answered(request.key)
            if self._tuner is not None:
                self._active_lanes = self._tuner.batch_done(
                    batch[0].rows if len(batch) == 1 else sum(r.rows for r in batch), done,
                    self._busy_lanes())
            self._wake_a_worker()

    # ---- counters ------------------------------------------------------------------------------

    def stats(self):
        """The batcher's counters as a plain dict (every key: docs/stats.md, "BatchedModule")."""
        self._check_process()
        with self._cond:
            counts = dict(self._counts)
            sizes = dict(sorted(self._batch_sizes.items()))
            waits, latencies = list(self._waits), list(self._latencies)
            lanes = [(lane.batches, lane.stream) for lane in self._lanes]
            busy = len(self._lanes) - len(self._free_lanes)
            active = self._active_lanes
            tuner_changes = self._tuner.changes if self._tuner is not None else 0
            pending = self._pending_count
            max_busy = self._max_lanes_busy
        batches = counts.get("batches", 0)
        batched_samples = sum(size * n for size, n in sizes.items())

        def ms(value):
            return None if value is None else value * 1e3

        return {
            "workers": self.workers, "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1e3, "closed": self._closed,
            "requests": counts.get("requests", 0), "samples": counts.get("samples", 0),
            "refused": counts.get("refused", 0), "cancelled": counts.get("cancelled", 0),
            "completed": counts.get("completed", 0), "failed": counts.get("failed", 0),
            "pending": pending,
            "batches": batches, "batches_failed": counts.get("batches_failed", 0),
            "retried_alone": counts.get("retried_alone", 0),
            "mean_batch_size": batched_samples / batches if batches else None,
            "mean_requests_per_batch": (counts.get("completed", 0) + counts.get("failed", 0))
            / batches if batches else None,
            "batch_sizes": sizes, "ran_alone": counts.get("ran_alone", 0),
            "caller_run_batches": counts.get("caller_run_batches", 0),
            "caller_led_batches": counts.get("caller_led_batches", 0),
            "queue_wait_p50_ms": ms(_percentile(waits, 50)),
            "queue_wait_p99_ms": ms(_percentile(waits, 99)),
            "latency_p50_ms": ms(_percentile(latencies, 50)),
            "latency_p99_ms": ms(_percentile(latencies, 99)),
            "lanes_busy": busy, "max_lanes_busy": max_busy,
            "adaptive": self._tuner is not None, "active_lanes": active,
            "active_lanes_changes": tuner_changes,
            "lane_batches": [n for n, _ in lanes],
            "lane_streams": [getattr(s, "stream_id", None) for _, s in lanes],
        }


# ---- helpers -----------------------------------------------------------------------------------

_TRAINING_MESSAGE = ("BatchedModule: the model is in training mode{where}; call model.eval() "
                     "(in training mode, dropout and batch norm would mix the samples of "
                     "different callers)")


class _LaneTuner:
    """How many lanes batches use, chosen by measured throughput (Note [How many lanes]). Pure
    bookkeeping, called under the batcher's lock: batch_done() returns the lanes to use."""

    WINDOW_S = 0.025  # a measuring window: at least this long ...
    WINDOW_BATCHES = 2  # ... and this many batches per lane in use
    TRIAL_WINDOWS = 2  # a trial is judged on this many windows' worth at once
    MARGIN = 0.05  # a trial is kept only if it beats the lanes it replaced by this much, or by
    # twice the windows' own spread when that is larger
    MAX_BACKOFF = 32  # windows between trials, at most, after trials that lost

    def __init__(self, lanes, now):
        self.lanes = lanes
        self.active = lanes
        self.rate = None  # samples/s with `active` lanes: a running mean (1/2) of its windows
        self.spread = 0.0  # a running mean (1/2) of |a window's rate / the mean before - 1|
        self.trial_from = None  # (lanes, rate) a running trial replaced
        self.down = True  # the next trial's direction
        self.backoff = self.wait = 1  # windows until the next trial
        self.changes = 0
        self._settling = False  # batches started with the lanes before a change still run
        self.restart(now)

    def restart(self, now):
        """A window starts now: the batcher was idle until now (its callers, not its lanes,
        set the rate of the time before), or the lanes in use just settled."""
        self._start, self._samples, self._batches = now, 0, 0

    def batch_done(self, samples, now, busy):
        """A batch of `samples` finished at `now`, `busy` lanes still running."""
        if self._settling:
            if busy <= self.active:  # only batches of the lanes in use run: measure from now
                self._settling = False
                self.restart(now)
            return self.active
        self._samples += samples
        self._batches += 1
        elapsed = now - self._start
        windows = self.TRIAL_WINDOWS if self.trial_from is not None else 1
        if elapsed < windows * self.WINDOW_S or \
                self._batches < windows * self.WINDOW_BATCHES * self.active:
            return self.active
        rate = self._samples / elapsed
        self.restart(now)
        self.window_done(rate)
        return self.active

    def window_done(self, rate):
        """A window (a trial's windows) at `self.active` lanes measured `rate` samples/s."""
        if self.trial_from is not None:
            lanes, base = self.trial_from
            self.trial_from = None
            if rate > base * (1 + max(self.MARGIN, 2 * self.spread)):
                self.rate, self.backoff, self.wait = rate, 1, 1  # kept: on the same way next
                return
            self._set(lanes)  # lost: back, and try less often (the other way first)
            self.rate = base
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
            self.wait = self.backoff
            self.down = not self.down
            return
        if self.rate is None:
            self.rate = rate
        else:
            self.spread = (self.spread + abs(rate / self.rate - 1)) / 2
            self.rate = (self.rate + rate) / 2
        self.wait -= 1
        if self.wait > 0:
            return
        candidate = self._neighbour()
        if candidate is None:  # one lane only: nothing to try
            self.wait = self.MAX_BACKOFF
            return
        self.trial_from = (self.active, self.rate)
        self._set(candidate)

    def _neighbour(self):
        down = max(1, self.active // 2) if self.active > 1 else None
        up = min(self.lanes, 2 * self.active) if self.active < self.lanes else None
        if self.down and down is None or not self.down and up is None:
            self.down = not self.down
        return down if self.down else up

    def _set(self, lanes):
        if lanes != self.active:
            self.active = lanes
            self.changes += 1
            self._settling = True


class _Outcomes(list):
    """(result, error) per call of a batch, whether the batch as a whole failed, and the
    KeyboardInterrupt or SystemExit that stopped it (None: none did)."""
    batch_failed = False
    interrupt = None


def _interrupted(interrupt):
    return RuntimeError(f"BatchedModule: the batch was interrupted by "
                        f"{type(interrupt).__name__}: {interrupt}")


def _whole(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"BatchedModule: {name} must be a whole number >= 1, got {value!r}")
    return value


def _model_device(model):
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def _floating_parameter_dtype(model):
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    return None


def _device_module(device):
    """The torch.<device> module with a stream API (Stream, stream), or None (cpu, or a torch
    without streams for that device)."""
    if device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    if module is None or not all(hasattr(module, name) for name in ("Stream", "stream")):
        return None
    return module


_NO_CONTEXT = contextlib.nullcontext()  # reusable: it holds no state


def _autocast_enabled(device_type):
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # an older torch takes no device type here: assume it is on
        return True
    except RuntimeError:  # a device type autocast does not know
        return False


def _synchronize_for_error(stream):
    """A failed batch's stream, synchronized before its error leaves, so that an error of the
    kernels it encoded is not left to the stream's next work. If that synchronize raises the
    kernels' error, it leaves instead (its context: the error that stopped the batch); a
    KeyboardInterrupt or SystemExit stays what leaves, the kernels' error dropped with the
    batch's results."""
    if stream is None:
        return
    interrupted = sys.exc_info()[0]
    if interrupted is not None and not issubclass(interrupted, Exception):
        try:
            stream.synchronize()
        except Exception:
            pass
        return
    stream.synchronize()


def _enter_batch_modes(autocast_types):
    """_BatchModes.__enter__ as a function, for the lone call's path: the usual thread (grad
    on, nothing else) costs one flag flip. Returns what _exit_batch_modes needs."""
    if torch.is_inference_mode_enabled() or any(_autocast_enabled(t) for t in autocast_types):
        modes = _BatchModes(autocast_types)
        modes.__enter__()
        return modes
    if torch.is_grad_enabled():
        torch._C._set_grad_enabled(False)
        return True
    return False


def _exit_batch_modes(modes):
    if modes is True:
        torch._C._set_grad_enabled(True)
    elif modes is not False:
        modes.__exit__(None, None, None)


class _BatchModes:
    """Note [What a batch runs under]: no grad, no inference mode, no autocast. Every call
    enters it: the usual thread (grad on, nothing else) costs one flag flip; only a thread in
    inference mode or autocast pays for the context managers that undo them."""
    __slots__ = ("autocast_types", "grad_was", "stack")

    def __init__(self, autocast_types):
        self.autocast_types = autocast_types

    def __enter__(self):
        slow = torch.is_inference_mode_enabled()
        for device_type in self.autocast_types:
            slow = slow or _autocast_enabled(device_type)
        if slow:
            stack = contextlib.ExitStack()
            if torch.is_inference_mode_enabled():
                stack.enter_context(torch.inference_mode(False))
            if torch.is_grad_enabled():
                stack.enter_context(torch.no_grad())
            for device_type in self.autocast_types:
                if _autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            self.stack = stack
            return self
        self.stack = None
        self.grad_was = torch.is_grad_enabled()
        if self.grad_was:
            torch._C._set_grad_enabled(False)  # what torch.no_grad() does, without its wrapper
        return self

    def __exit__(self, *exc):
        if self.stack is not None:
            return self.stack.__exit__(*exc)
        if self.grad_was:
            torch._C._set_grad_enabled(True)
        return False
