"""torch.mps_sim: the device module of the mps_sim device, mirroring what the patched
torch.mps offers (set_threadsafe, is_threadsafe, threadsafe_stats, synchronize, Stream, Event,
current_stream, default_stream, set_stream, stream(), Stream.wait_stream, record_stream).

Note [What "off" means]
- `set_threadsafe(False)` is upstream's thread policy: every thread encodes on the default
  stream. The runtime's protections still serialize the threads through that stream's queue,
  so it is safe, only serial.
- `set_protections(False)` (or MPS_SIM_UNSAFE=1) switches the runtime's protections off:
  no serial queue around the stream state, no serialization domains around shared kernel
  objects, no cross-stream ordering, no deferred frees. Together with set_threadsafe(False) it
  reproduces what upstream PyTorch does on MPS (threads touching one stream's command buffer and
  encoder, and shared cached graphs, at the same time); the sim device then reports the
  violations that crash a real Mac, by default by aborting the process as Metal does.
"""

import contextlib
import operator
import os
import threading

import torch

from . import _C

WorkInFlightError = _C.WorkInFlightError
MetalViolation = _C.MetalViolation

_DEVICE_TYPE = "mps_sim"


# ---- device module basics -------------------------------------------------------------------
def is_available():
    return True


def device_count():
    return 1


def current_device():
    return 0


def set_device(device):
    if isinstance(device, int) and not isinstance(device, bool):
        if device != 0:
            raise ValueError(f"mps_sim has one device (index 0), got index {device}")
        return
    _check_device(device)


def is_initialized():
    return not _C._is_in_bad_fork()


def _is_in_bad_fork():
    """True in the child of a fork() made after the device was used: every use of the device
    there raises RuntimeError (use the 'spawn' start method). Note [Device use after fork]."""
    return _C._is_in_bad_fork()


def manual_seed_all(seed):
    # Random ops run their CPU kernels on the sim GPU threads with the CPU generator, which
    # torch.manual_seed seeds already.
    torch.random.default_generator.manual_seed(int(seed))


manual_seed = manual_seed_all


def get_rng_state(device="mps_sim"):
    return torch.random.get_rng_state()


def set_rng_state(state, device="mps_sim"):
    torch.random.set_rng_state(state)


def get_amp_supported_dtype():
    return [torch.float16, torch.bfloat16]


# ---- thread safety --------------------------------------------------------------------------
def _require_bool(name, value):
    # As torch's own switches (torch.use_deterministic_algorithms): bool("False") is True, so
    # anything but a bool is refused rather than converted.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} "
                        f"{value!r}")
    return value


def _require_microseconds(name, value, maximum):
    if isinstance(value, bool):  # operator.index(True) is 1: a switch passed by mistake
        raise TypeError(f"{name} must be a whole number of microseconds, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a whole number of microseconds, got "
                        f"{type(value).__name__} {value!r}") from None
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be from 0 to {maximum:,} microseconds, got {value:,}")
    return value


def set_threadsafe(on=True):
    """Switches the thread policy (Note [Thread policy] in aten_mps/runtime.h). Raises
    WorkInFlightError (a RuntimeError) while another thread has uncommitted work, TypeError
    for anything but a bool."""
    _C.set_threadsafe(_require_bool("set_threadsafe(on)", on))


def is_threadsafe():
    return _C.is_threadsafe()


def threadsafe_stats():
    """The runtime's counters: per stream, per serialization domain, allocator and sim."""
    return _C.stats()


def set_protections(on=True, *, serial_queue=None, domains=None, cross_stream_order=None,
                    deferred_frees=None):
    """All protections on (default) or off; keywords override single ones. Off is the
    deliberately unsafe mode (Note [What "off" means])."""
    flags = {name: _require_bool("set_protections(on)", on) for name in
             ("serial_queue", "domains", "cross_stream_order", "deferred_frees")}
    for name, value in (("serial_queue", serial_queue), ("domains", domains),
                        ("cross_stream_order", cross_stream_order),
                        ("deferred_frees", deferred_frees)):
        if value is not None:
            flags[name] = _require_bool(f"set_protections({name})", value)
    _C.set_protections(**flags)


def protections():
    return _C.protections()


def set_violation_policy(policy):
    """'abort' (crash-faithful, default), 'throw' (MetalViolation) or 'count'."""
    _C.set_violation_policy(policy)


def violation_policy():
    return _C.violation_policy()


def violations():
    return _C.violation_messages()


def clear_violations():
    _C.clear_violations()


# At most 10 s, as MPS_SIM_RACE_WINDOW_US: a race window holds a thread inside a sim object.
_MAX_RACE_WINDOW_US = 10_000_000
# The sim keeps a meeting's timeout in 32 bits (about 71 minutes).
_MAX_RACE_MEETING_US = 2**32 - 1


def set_race_window(point, microseconds):
    """Linger at a sim race point ('encoder', 'command_buffer', 'shared_object') for
    `microseconds` (0: off; at most 10 s)."""
    _C.set_race_window(point, _require_microseconds("set_race_window(microseconds)",
                                                    microseconds, _MAX_RACE_WINDOW_US))


def set_race_meeting(point, timeout_us):
    """Makes races at a sim race point certain: a thread inside an object there stays inside
    until another thread tries that object, for at most `timeout_us` (0: off). Note [Race
    meetings] in aten_mps/sim/inside.cpp."""
    _C.set_race_meeting(point, _require_microseconds("set_race_meeting(timeout_us)", timeout_us,
                                                     _MAX_RACE_MEETING_US))


def _check_optional_device(device):
    # As torch.cuda's device arguments: another device type or index is refused, never
    # ignored (synchronize("cpu") used to synchronize mps_sim and return).
    if device is not None:
        _check_device(device)


def synchronize(device=None):
    """Device-wide synchronize: commits this thread's stream and waits for the work every
    stream has submitted (Note [Device-wide synchronize])."""
    _check_optional_device(device)
    _C.synchronize()


def empty_cache():
    _C.empty_cache()


def memory_allocated(device=None):
    return _C.stats()["allocator"]["allocated_bytes"]


def implemented_ops():
    return list(_C.implemented_ops())


# ---- streams and events ---------------------------------------------------------------------
def _device():
    return torch.device(_DEVICE_TYPE, 0)


# c10's DeviceType value for PrivateUse1, which torch.Stream(stream_id=...) needs.
_PRIVATEUSE1 = 20


class Stream(torch.Stream):
    """A stream of the runtime's pool (torch.Stream on mps_sim). Its stream_id is the runtime
    stream id (0: default stream, 1..32: the pool). Streams are never destroyed: the pool is
    fixed (Note [Stream ids] in aten_mps/runtime.h)."""

    def __new__(cls, device=None, priority=0, *, stream_id=None):
        if device is not None:
            _check_device(device)
        if stream_id is not None:
            try:
                if isinstance(stream_id, bool):
                    raise TypeError
                stream_id = operator.index(stream_id)  # int(2.7) would be stream 2
            except TypeError:
                raise TypeError(f"stream_id must be an int, got {type(stream_id).__name__} "
                                f"{stream_id!r}") from None
            if not 0 <= stream_id <= _C.pool_size():
                raise ValueError(f"mps_sim has streams 0..{_C.pool_size()}, got {stream_id}")
            return super().__new__(cls, stream_id=int(stream_id), device_index=0,
                                   device_type=_PRIVATEUSE1)
        return super().__new__(cls, device=_device(), priority=priority)

    def wait_stream(self, stream):
        """Makes this stream wait on the GPU for everything `stream` has done so far."""
        _check_stream(stream)
        self.wait_event(stream.record_event())

    def record_event(self, event=None):
        if event is None:
            event = Event()
        event.record(self)
        return event

    # Note [Stream contexts are per thread]
    # One Stream object serves every thread for its id (_streams_by_id), so the context a
    # `with` block opens cannot live on the object: two threads inside `with default_stream():`
    # at once would restore each other's saved state. Each thread keeps its own stack.
    def __enter__(self):
        context = stream(self)
        entered = context.__enter__()
        _thread_stream_contexts().append(context)
        return entered

    def __exit__(self, *exc):
        return _thread_stream_contexts().pop().__exit__(*exc)

    def __repr__(self):
        return f"<torch.mps_sim.Stream id={self.stream_id} device=mps_sim:0>"


class Event(torch.Event):
    """An event on a stream's timeline (aten_mps/events.h)."""

    def __new__(cls, enable_timing=False, blocking=False, interprocess=False):
        if enable_timing:
            raise ValueError("mps_sim events do not record timestamps (enable_timing=False)")
        return super().__new__(cls, device=_device())

    def record(self, stream=None):
        super().record(current_stream() if stream is None else _check_stream(stream))

    def wait(self, stream=None):
        super().wait(current_stream() if stream is None else _check_stream(stream))


def _check_device(device):
    """mps_sim:0 (or mps_sim, or index 0); ValueError for another device type, RuntimeError
    for another index, as the device's guard and allocator refuse mps_sim:1."""
    if isinstance(device, int):
        device = torch.device(_DEVICE_TYPE, device)
    device = torch.device(device)
    if device.type != _DEVICE_TYPE:
        raise ValueError(f"mps_sim.Stream needs an mps_sim device, got {device}")
    if device.index not in (None, 0):
        raise RuntimeError(f"mps_sim: device index {device.index} is out of range: the sim has "
                           "one device (mps_sim:0)")
    return device


_thread_state = threading.local()


def _thread_stream_contexts():
    contexts = getattr(_thread_state, "stream_contexts", None)
    if contexts is None:
        contexts = _thread_state.stream_contexts = []
    return contexts


def _check_stream(stream):
    if not isinstance(stream, torch.Stream) or stream.device.type != _DEVICE_TYPE:
        raise ValueError(f"expected an mps_sim stream, got {stream!r}")
    return stream


# Streams are never destroyed (the pool is fixed), so one Python object per id serves every
# caller: current_stream() in a hot loop costs a dict lookup, not an object construction.
_streams_by_id = {}


def _stream_from_id(stream_id):
    stream = _streams_by_id.get(stream_id)
    if stream is None:
        stream = _streams_by_id.setdefault(stream_id, Stream(stream_id=stream_id))
    return stream


def current_stream(device=None):
    _check_optional_device(device)
    return _stream_from_id(_C.current_stream_id())


def default_stream(device=None):
    _check_optional_device(device)
    return _stream_from_id(0)


def set_stream(stream):
    """Makes `stream` this thread's current stream (None: back to the thread policy)."""
    _C.set_current_stream(-1 if stream is None else _check_stream(stream).stream_id)


@contextlib.contextmanager
def stream(s):
    """Runs the block with `s` as this thread's current stream, then restores what was current
    before (an explicit stream, or the thread policy's choice)."""
    if s is None:
        yield
        return
    _check_stream(s)
    previous = _C.explicit_stream_id()
    _C.set_current_stream(s.stream_id)
    try:
        yield s
    finally:
        # In a fork() child, a block another parent thread was inside is closed by the child's
        # garbage collection; nothing of the device is usable there (Note [Device use after
        # fork]), so there is nothing to restore, and raising would only print noise at exit.
        if not _C._is_in_bad_fork():
            _C.set_current_stream(previous)


StreamContext = stream


def release_thread_stream():
    """Gives this thread's pool stream back now (thread exit does it too)."""
    _C.release_thread_stream()


if os.environ.get("MPS_SIM_THREADSAFE", "0") not in ("", "0"):
    # The runtime reads it too at creation; this keeps the two in step if torch created the
    # runtime earlier through an op.
    set_threadsafe(True)
