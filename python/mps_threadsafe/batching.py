r"""BatchedModule: one model served to many threads, batched dynamically, on parallel streams.

Callers on any thread call ``batched(x)`` (blocking) or ``batched.submit(x)`` (a
``concurrent.futures.Future``) with one sample or a small batch; the batcher coalesces waiting
calls of one shape into batches of up to ``max_batch`` samples and runs up to ``workers``
batches at once, each on its own stream, and gives every caller its own rows of the result.

This file imports only torch and the standard library: the patched ``torch.mps`` ships the same
file (patches/0017), and ``mps_threadsafe.BatchedModule`` is this class on any device (mps,
mps_sim, cuda, cpu).

Note [Lanes]
A lane is one stream with at most one batch on it at a time; there are ``workers`` lanes and
as many worker threads. A batch runs inside ``with <device>.stream(lane.stream)`` and ends with
that stream's synchronize, so its result (or its error) is known before any caller sees it.
Lanes, not threads, are what run in parallel: a lane may be run by a worker or by a caller
(Note [A lane's stream is its worker's own]
With thread safety on, the thread policy gives each thread a pool stream no other thread holds,
but a stream handed out by ``Stream()`` (round robin) is not held by anyone: the policy may
bind a caller thread to it later, and that thread's own work would then queue behind the
lane's batches and share their command buffers (and their GPU errors). So each worker takes
its lane's stream through the policy, as its own thread's stream, at start: no other thread
is bound to it while the batcher lives. With thread safety off (every thread on the default
stream, which would serialize the lanes) or on a device whose streams have no such policy,
the lane takes a stream of the pool with ``Stream()``.

Note [The caller runs its own batch]), never by two threads at once.

Note [The caller runs its own batch]
A blocking call that finds nothing waiting, a lane free and no more calls in flight than
there are lanes runs its batch itself, on its own thread: handing the work to a worker and
waiting for it costs two thread switches (about 0.1-0.2 ms in CPython) and buys nothing when
there is nobody to batch with. With thread safety on it runs on its own thread's stream, as
calling the model from that thread would (switching it to a lane's stream costs time, and a
different stream each call makes every buffer cross streams); with it off, that stream is the
default one every thread shares, so it runs on the lane's. So up to ``workers`` concurrent
callers cost what calling the model from their own threads costs, and a lone caller never
waits for a batch to fill. Futures (``submit``) always go through the queue.

Note [When a batch leaves]
Once there are more calls in flight (accepted, not yet answered) than lanes, calls queue and
the workers take them as lanes free up. A free worker takes the oldest group as soon as it
holds its fair share of the calls in flight, ceil(in flight / lanes) samples (at most
``max_batch``), or its oldest call has waited ``max_wait_ms``. In a closed loop the callers of
a finished batch come back within microseconds, and without the fair share the first of them
would leave alone on the lane that just freed, the rest queueing behind it: batches would
alternate between one call and all the others. ``max_wait_ms`` = 0 takes whatever is waiting
at once (work-conserving, as Triton's ``max_queue_delay`` default). A lone caller never waits:
it runs its own batch (Note [The caller runs its own batch]).

Note [What a batch runs under]
A batch mixes callers, so it cannot run under any one caller's thread-local modes: it runs
under ``torch.no_grad()`` with autocast off, whichever thread runs it (a caller's autocast or
inference_mode must not make its result, and its batch-mates', depend on which thread ran
the batch). Inputs that require grad are refused: the result could not carry their gradient.
Results are views of the batch's output rows (as ``torch.split`` returns); ``.clone()`` one to
own its storage.

Note [Batches hold one shape]
Calls are grouped by each argument's dtype and sample shape (the shape after the batch
dimension), so a call of a shape or dtype nobody else uses runs alone: it can never fail
another caller's batch. With a pad rule (:class:`PadSequences`), samples of different lengths
share a batch padded to a bucket; a sample no bucket fits runs in its exact-shape group.
"""

import atexit
import collections
import concurrent.futures
import contextlib
import os
import threading
import time
import weakref

import torch

__all__ = ["BatchedModule", "BatcherClosedError", "PadSequences"]

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
    ``nn.TransformerEncoderLayer``). A batch of one sample runs unpadded, without the mask.
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

    def unpad(self, y, sample_shape, target):
        """A caller's rows of one output, cut back to its own length where they were padded."""
        axis = self.dim + 1
        if (isinstance(y, torch.Tensor) and y.dim() > axis
                and y.shape[axis] == target[self.dim] != sample_shape[self.dim]):
            return y.narrow(axis, 0, sample_shape[self.dim])
        return y

    def __repr__(self):
        buckets = f"sizes={self.sizes}" if self.sizes is not None else f"multiple={self.multiple}"
        return (f"PadSequences(dim={self.dim}, {buckets}, value={self.value!r}, "
                f"mask_kwarg={self.mask_kwarg!r})")


# ---- Requests and lanes ------------------------------------------------------------------------


class _Request:
    __slots__ = ("args", "rows", "sample_shape", "key", "future", "accepted", "started")

    def __init__(self, args, rows, sample_shape, key):
        self.args, self.rows, self.sample_shape, self.key = args, rows, sample_shape, key
        self.future = concurrent.futures.Future()
        self.accepted = time.perf_counter()
        self.started = None


class _Lane:
    __slots__ = ("index", "stream", "busy", "batches")

    def __init__(self, index, stream):
        self.index, self.stream, self.busy, self.batches = index, stream, False, 0


class _Alone:
    """A group key no other call shares (a zero-row call: the model may not take an empty
    batch, and that must not fail anyone else's)."""
    __slots__ = ()


def _tree_map(fn, value):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_tree_map(fn, v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _tree_map(fn, v)) for k, v in value.items())
    return value


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


# ---- The batcher -------------------------------------------------------------------------------


class BatchedModule:
    r"""Serves ``model`` to many threads: calls are batched dynamically and run on ``workers``
    parallel streams.

    Args:
        model: an ``nn.Module`` in eval mode (or any callable) whose inputs and outputs have the
            batch dimension first and whose samples do not depend on each other.
        max_batch (int): the most samples one batch holds (default 8). A call with more rows
            runs alone.
        max_wait_ms (float): the longest a queued call waits for its batch to reach its fair
            share of the calls in flight (default 1; 0: take whatever is waiting at once; Note
            [When a batch leaves]). A lone caller never waits.
        workers (int): lanes (streams) that run batches at once, one worker thread each
            (default 2).
        device: where the model runs (default: the device of its first parameter or buffer,
            else cpu). Inputs may be on this device or on the cpu.
        pad: a pad rule (:class:`PadSequences`) for single-input models, so samples of
            different lengths can share a batch.
        output_device: move each batch's output there once before it is split (e.g. "cpu" for a
            server that sends results on); default: where the model puts it.

    ``batched(*tensors, timeout=None)`` returns what ``model(*tensors)`` returns, computed in a
    batch; ``batched.submit(*tensors)`` returns a ``concurrent.futures.Future`` of it. Both
    raise ``TypeError``/``ValueError`` for a bad input before it joins a batch, and
    :class:`BatcherClosedError` after :meth:`close`. A batch that fails raises its error to
    exactly its callers. ``stats()`` returns the counters (docs/stats.md).
    """

    def __init__(self, model, max_batch=8, max_wait_ms=1.0, workers=2, *, device=None, pad=None,
                 output_device=None):
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
        _refuse_training(model)
        self.model = model
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.pad = pad
        model_device = _model_device(model)
        self.device = model_device if device is None else torch.device(device)
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
        self._lanes = [_Lane(i, None) for i in range(self.workers)]
        self._free_lanes = list(reversed(self._lanes))

        self._cond = threading.Condition(threading.Lock())
        self._pending = collections.OrderedDict()  # group key -> deque of _Request
        self._pending_count = 0
        self._in_flight = 0  # accepted calls not yet answered (Note [When a batch leaves])
        self._closed = False
        self._forked = False
        self._pid = os.getpid()
        self._counts = collections.Counter()
        self._batch_sizes = collections.Counter()
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
        request, lane = self._accept(args, may_run_here=True)
        if lane is not None:  # Note [The caller runs its own batch]
            own = self._device_module is not None and self._callers_stream_is_its_own()
            self._run_and_release(lane, [request], on_own_stream=own)
            return request.future.result()
        try:
            return request.future.result(timeout)
        except concurrent.futures.TimeoutError:
            request.future.cancel()  # withdrawn if not yet in a batch
            raise

    def submit(self, *args):
        """A ``concurrent.futures.Future`` of ``model(*args)`` computed in a batch. Bad input
        raises here, not through the future."""
        request, _ = self._accept(args, may_run_here=False)
        return request.future

    def close(self, wait=True):
        """Refuses new calls (BatcherClosedError) and runs every call already accepted; with
        ``wait``, returns once they are done and the workers have exited."""
        if self._forked or self._pid != os.getpid():
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            current = threading.current_thread()
            for thread in self._threads:
                if thread is not current:
                    thread.join()
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
                f"device={self.device}{', closed' if self._closed else ''})")

    # ---- accepting a call ----------------------------------------------------------------------

    def _accept(self, args, may_run_here):
        if self._forked or self._pid != os.getpid():
            # Checked before the lock: it may have been held by another thread at fork().
            raise RuntimeError("BatchedModule: this process is a fork() child of the one that "
                               "made the batcher; its worker threads did not survive fork(). "
                               "Make a new BatchedModule in the child.")
        try:
            rows, sample_shape, key = self._check(args)
        except (TypeError, ValueError, BatcherClosedError):
            with self._cond:
                self._counts["refused"] += 1
            raise
        request = _Request(args, rows, sample_shape, key)
        with self._cond:
            if self._closed:
                self._counts["refused"] += 1
                raise BatcherClosedError("BatchedModule is closed: it runs the calls it accepted "
                                         "before close() and refuses new ones")
            self._counts["requests"] += 1
            self._counts["samples"] += rows
            self._in_flight += 1
            if (may_run_here and self._pending_count == 0 and self._free_lanes
                    and self._in_flight <= len(self._lanes)):
                request.future.set_running_or_notify_cancel()
                request.started = time.perf_counter()
                self._counts["caller_run_batches"] += 1
                return request, self._claim_lane()
            self._pending.setdefault(key, collections.deque()).append(request)
            self._pending_count += 1
            if self._free_lanes:
                self._cond.notify()
        return request, None

    def _check(self, args):
        """(rows, sample shape of the first argument, group key), or TypeError/ValueError with
        what is wrong (Note [Batches hold one shape])."""
        if not args:
            raise TypeError("BatchedModule: call it with the model's input tensor(s), batch "
                            "dimension first")
        if self.pad is not None and len(args) != 1:
            raise TypeError(f"BatchedModule: a pad rule batches single-input calls; this call "
                            f"has {len(args)} arguments")
        if getattr(self.model, "training", False):
            raise ValueError("BatchedModule: the model is in training mode; call model.eval() "
                             "(in training mode, dropout and batch norm would mix the samples "
                             "of different callers)")
        rows = None
        parts = []
        for position, arg in enumerate(args):
            where = f"argument {position}"
            if not isinstance(arg, torch.Tensor):
                raise TypeError(f"BatchedModule: {where} must be a tensor, got "
                                f"{type(arg).__name__}")
            if arg.layout != torch.strided:
                raise TypeError(f"BatchedModule: {where} is a {arg.layout} tensor; only dense "
                                "(strided) tensors can be batched")
            if arg.device.type != "cpu" and arg.device != self.device:
                raise ValueError(f"BatchedModule: {where} is on {arg.device}; the model runs on "
                                 f"{self.device} (give it tensors on {self.device} or on the cpu)")
            if arg.dim() == 0:
                raise ValueError(f"BatchedModule: {where} is 0-dimensional; inputs need the batch "
                                 "dimension first (x.unsqueeze(0) for one sample)")
            if arg.requires_grad:
                raise ValueError(f"BatchedModule: {where} requires grad; the model runs without "
                                 "autograd (torch.no_grad), so the result could not carry its "
                                 "gradient: pass x.detach(), or call the model itself to train")
            if (self._param_dtype is not None and arg.is_floating_point()
                    and arg.dtype != self._param_dtype):
                raise TypeError(f"BatchedModule: {where} is {arg.dtype}, the model's parameters "
                                f"are {self._param_dtype}")
            if rows is None:
                rows = arg.shape[0]
            elif arg.shape[0] != rows:
                raise ValueError(f"BatchedModule: {where} has {arg.shape[0]} rows, argument 0 "
                                 f"has {rows}: every argument needs the same batch size")
            parts.append((arg.dtype, tuple(arg.shape[1:])))
        sample_shape = parts[0][1]
        if rows == 0:
            return rows, sample_shape, _Alone()
        if self.pad is not None:
            target = self.pad.target(sample_shape)
            if target is not None:
                return rows, sample_shape, ("padded", parts[0][0], tuple(target))
        return rows, sample_shape, tuple(parts)

    # ---- lanes and workers ---------------------------------------------------------------------

    def _claim_lane(self):
        lane = self._free_lanes.pop()
        lane.busy = True
        busy = len(self._lanes) - len(self._free_lanes)
        self._max_lanes_busy = max(self._max_lanes_busy, busy)
        return lane

    def _release_lane(self, lane):
        lane.busy = False
        self._free_lanes.append(lane)
        if self._pending_count:
            self._cond.notify()

    def _take_batch(self):
        """The next batch from the group whose oldest call waited longest (under the lock);
        None when nothing is waiting. Withdrawn (cancelled) calls are dropped."""
        while self._pending:
            key = min(self._pending, key=lambda k: self._pending[k][0].accepted)
            queue = self._pending[key]
            batch, rows = [], 0
            while queue and (not batch or rows + queue[0].rows <= self.max_batch):
                request = queue.popleft()
                self._pending_count -= 1
                if not request.future.set_running_or_notify_cancel():
                    self._counts["cancelled"] += 1
                    self._in_flight -= 1
                    continue
                request.started = time.perf_counter()
                batch.append(request)
                rows += request.rows
            if not queue:
                del self._pending[key]
            if batch:
                return batch
        return None

    def _hold_open_for(self):
        """Seconds a free worker should still wait for the oldest group to reach its fair share
        (Note [When a batch leaves]); 0 to take it now."""
        if self.max_wait_s == 0 or self._closed:
            return 0.0
        key = min(self._pending, key=lambda k: self._pending[k][0].accepted)
        queue = self._pending[key]
        fair_share = min(self.max_batch, -(-self._in_flight // len(self._lanes)))
        if isinstance(key, _Alone) or sum(r.rows for r in queue) >= fair_share:
            return 0.0
        return max(0.0, queue[0].accepted + self.max_wait_s - time.perf_counter())

    def _take_lane_stream(self):
        """The stream of this worker's lane (Note [A lane's stream is its worker's own])."""
        module = self._device_module
        if module is None:
            return None
        is_threadsafe = getattr(module, "is_threadsafe", None)
        current, default = (getattr(module, name, None) for name in ("current_stream",
                                                                     "default_stream"))
        if is_threadsafe is not None and current is not None and default is not None \
                and is_threadsafe():
            own = current()  # binds this thread to a pool stream of its own
            if own.stream_id != default().stream_id:
                return own
        return module.Stream()

    def _worker(self, lane, started, failures):
        try:
            lane.stream = self._take_lane_stream()
        except Exception as error:  # raised by the constructor
            failures.append(error)
            return
        finally:
            started.set()
        with self._cond:
            while True:
                if not self._pending_count:
                    if self._closed:
                        return
                    self._cond.wait()
                    continue
                if not self._free_lanes:
                    self._cond.wait()
                    continue
                hold = self._hold_open_for()
                if hold > 0:
                    self._cond.wait(hold)
                    continue
                batch = self._take_batch()
                if batch is None:
                    continue
                lane = self._claim_lane()
                self._cond.release()
                try:
                    self._run_and_release(lane, batch)
                finally:
                    self._cond.acquire()

    def _callers_stream_is_its_own(self):
        """Whether the calling thread's current stream is its own (Note [The caller runs its
        own batch]): thread safety on, so the policy gave it a stream no other thread holds."""
        is_threadsafe = getattr(self._device_module, "is_threadsafe", None)
        return is_threadsafe is not None and bool(is_threadsafe())

    def _run_and_release(self, lane, batch, on_own_stream=False):
        try:
            self._run(lane, batch, on_own_stream)
        finally:
            with self._cond:
                lane.batches += 1
                self._release_lane(lane)

    # ---- running a batch -----------------------------------------------------------------------

    def _run(self, lane, batch, on_own_stream=False):
        """Runs one batch on its lane and settles every caller's future (Note [What a batch runs
        under]); an error settles them all with it and reaches no one else."""
        try:
            results = self._compute(lane, batch, on_own_stream)
        except Exception as error:
            self._settle(batch, error=error)
            return
        except BaseException as interrupt:
            # KeyboardInterrupt or SystemExit in a caller that ran its own batch: it is that
            # thread's to raise; the batch's other callers (none today: a caller runs a batch
            # of its own call only) get a RuntimeError, never the interrupt itself.
            self._settle(batch, error=RuntimeError(
                f"BatchedModule: the batch was interrupted by {type(interrupt).__name__} in the "
                "thread that ran it"))
            raise
        self._settle(batch, results=results)

    def _compute(self, lane, batch, on_own_stream):
        device = self.device
        stream = lane.stream
        if on_own_stream:
            stream = self._device_module.current_stream()
            stream_context = contextlib.nullcontext()
        elif stream is not None:
            stream_context = self._device_module.stream(stream)
        else:
            stream_context = contextlib.nullcontext()
        with torch.no_grad(), _autocast_off(device), stream_context:
            first = batch[0]
            # A batch of one runs as the model would run it alone: unpadded, without a mask.
            padded = (self.pad is not None and len(batch) > 1 and isinstance(first.key, tuple)
                      and first.key[:1] == ("padded",))
            kwargs = {}
            if padded:
                target = first.key[2]
                inputs = (torch.cat([self.pad.pad(r.args[0].to(device), target) for r in batch]),)
                lengths = [r.sample_shape[self.pad.dim] for r in batch for _ in range(r.rows)]
                kwargs = self.pad.model_kwargs(lengths, target, device)
            elif len(batch) == 1:
                inputs = tuple(a.to(device) for a in first.args)
            else:
                inputs = tuple(torch.cat([r.args[i].to(device) for r in batch])
                               for i in range(len(first.args)))
            output = self.model(*inputs, **kwargs)
            if self.output_device is not None:
                output = _tree_map(lambda t: t.to(self.output_device), output)
            if stream is not None:
                stream.synchronize()  # the batch's error, if any, belongs to this batch
            # Checked for a batch of one too, so whether a call fails never depends on whether
            # it happened to be batched.
            total = sum(r.rows for r in batch)
            for tensor in _tree_tensors(output):
                if tensor.dim() == 0 or tensor.shape[0] != total:
                    raise RuntimeError(
                        f"BatchedModule: the model returned a tensor of shape "
                        f"{tuple(tensor.shape)} for a batch of {total} samples; every output "
                        "needs the batch dimension first to be split between callers")
            if len(batch) == 1 and not padded:
                return [output]  # exactly what the model returned for this call alone
            results, start = [], 0
            for request in batch:
                rows = slice(start, start + request.rows)
                start += request.rows
                if padded:
                    results.append(_tree_map(
                        lambda t, r=request, s=rows: self.pad.unpad(t[s], r.sample_shape, target),
                        output))
                else:
                    results.append(_tree_map(lambda t, s=rows: t[s], output))
            return results

    def _settle(self, batch, results=None, error=None):
        done = time.perf_counter()
        with self._cond:
            self._in_flight -= len(batch)
            if self._pending_count:
                self._cond.notify()  # a smaller fair share may let a held batch leave
            self._counts["batches"] += 1
            self._batch_sizes[sum(r.rows for r in batch)] += 1
            if len(batch) == 1:
                self._counts["ran_alone"] += 1
            if error is not None:
                self._counts["batches_failed"] += 1
                self._counts["failed"] += len(batch)
            else:
                self._counts["completed"] += len(batch)
            for request in batch:
                self._waits.append(request.started - request.accepted)
                self._latencies.append(done - request.accepted)
        for index, request in enumerate(batch):
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(results[index])

    # ---- counters ------------------------------------------------------------------------------

    def stats(self):
        """The batcher's counters as a plain dict (every key: docs/stats.md, "BatchedModule")."""
        with self._cond:
            counts = dict(self._counts)
            sizes = dict(sorted(self._batch_sizes.items()))
            waits, latencies = list(self._waits), list(self._latencies)
            lanes = [(lane.batches, lane.stream) for lane in self._lanes]
            busy = len(self._lanes) - len(self._free_lanes)
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
            "mean_batch_size": batched_samples / batches if batches else None,
            "mean_requests_per_batch": (counts.get("completed", 0) + counts.get("failed", 0))
            / batches if batches else None,
            "batch_sizes": sizes, "ran_alone": counts.get("ran_alone", 0),
            "caller_run_batches": counts.get("caller_run_batches", 0),
            "queue_wait_p50_ms": ms(_percentile(waits, 50)),
            "queue_wait_p99_ms": ms(_percentile(waits, 99)),
            "latency_p50_ms": ms(_percentile(latencies, 50)),
            "latency_p99_ms": ms(_percentile(latencies, 99)),
            "lanes_busy": busy, "max_lanes_busy": max_busy,
            "lane_batches": [n for n, _ in lanes],
            "lane_streams": [getattr(s, "stream_id", None) for _, s in lanes],
        }


# ---- helpers -----------------------------------------------------------------------------------


def _whole(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"BatchedModule: {name} must be a whole number >= 1, got {value!r}")
    return value


def _refuse_training(model):
    if not isinstance(model, torch.nn.Module):
        return
    training = [name or "the model itself" for name, m in model.named_modules() if m.training]
    if training:
        where = f" ({training[0]})"
        raise ValueError(f"BatchedModule: the model is in training mode{where}; call "
                         "model.eval() (in training mode, dropout and batch norm would mix the "
                         "samples of different callers)")


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


def _autocast_off(device):
    """Autocast off for the cpu and the device, where the calling thread has it on (entering
    torch.autocast costs about 10 us, so only where it is needed)."""
    stack = contextlib.ExitStack()
    for device_type in dict.fromkeys(("cpu", device.type)):
        try:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        except RuntimeError:  # a device type autocast does not know
            pass
    return stack
