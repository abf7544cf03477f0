"""What users of torch.cuda expect of a device: Stream() is a new pool stream, invalid streams
and device indices are refused with a clear error instead of silently using stream or device 0."""

import threading

import pytest
import torch

from conftest import DEVICE


def test_new_stream_is_not_the_threads_current_stream():
    # torch.cuda.Stream() semantics: a new stream from the pool, never the caller's own. Under
    # the thread policy the caller's current stream is itself a pool stream (the lowest free id),
    # which the round-robin pool used to hand out first.
    torch.mps_sim.set_threadsafe(True)
    result = {}

    def worker():
        torch.zeros(1, device=DEVICE).cpu()
        mine = torch.mps_sim.current_stream().stream_id
        fresh = [torch.mps_sim.Stream().stream_id for _ in range(40)]
        generic = torch.Stream(device=DEVICE).stream_id
        result.update(mine=mine, fresh=fresh, generic=generic)

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert result["mine"] != 0
    assert result["mine"] not in result["fresh"] and result["generic"] != result["mine"]
    assert all(1 <= i <= torch.mps_sim._C.pool_size() for i in result["fresh"])


@pytest.mark.parametrize("bad_id", [999, 33, -1])
def test_stream_made_with_an_invalid_id_is_refused(bad_id):
    with pytest.raises(ValueError, match="streams 0..32"):
        torch.mps_sim.Stream(stream_id=bad_id)
    # torch.Stream builds any id without asking the backend, and its __enter__ cannot raise
    # (the guard's exchangeStream is noexcept): the thread is marked, and every op raises until
    # the block ends. Before the fix the id was swallowed and the ops ran on stream 0.
    if not hasattr(torch.Stream, "__enter__"):
        return  # torch < 2.7: torch.Stream is not a context manager, so no such block exists
    privateuse1 = 20  # c10::DeviceType::PrivateUse1
    bad = torch.Stream(stream_id=bad_id, device_index=0, device_type=privateuse1)
    x = torch.ones(4, device=DEVICE)
    with bad:
        with pytest.raises(ValueError, match=f"stream \\(id {bad_id}\\) is not one of this device's"):
            x + 1
        with pytest.raises(ValueError, match=f"id {bad_id}"):
            torch.ones(2).to(DEVICE)
    assert (x + 1).cpu().eq(2).all()  # the block's exit restored the previous stream
    assert torch.mps_sim._C.explicit_stream_id() == -1
    # torch.accelerator.set_stream: refused until a valid stream is set.
    if hasattr(torch, "accelerator") and hasattr(torch.accelerator, "set_stream"):
        torch.accelerator.set_stream(bad)
        with pytest.raises(ValueError, match=f"id {bad_id}"):
            x * 2
        torch.accelerator.set_stream(torch.mps_sim.default_stream())
        assert (x * 2).cpu().eq(2).all()
        torch.mps_sim.set_stream(None)


@pytest.mark.parametrize("target", ["mps_sim:1", "mps_sim:7"])
def test_device_index_out_of_range_is_refused(target):
    with pytest.raises(RuntimeError, match="device index .* out of range.*one device"):
        torch.randn(2).to(target)
    with pytest.raises(RuntimeError, match="out of range|one device"):
        torch.empty(3, device=target)
    with pytest.raises(RuntimeError, match="out of range|one device"):
        torch.zeros(2, device=DEVICE).to(target)
    assert torch.randn(2).to("mps_sim:0").device == torch.device(DEVICE, 0)


@pytest.mark.parametrize("device", ["mps_sim:1", torch.device("mps_sim", 3), 1])
def test_stream_on_a_missing_device_index_is_refused(device):
    # As torch.Stream(device="mps_sim:1") and torch.empty(device="mps_sim:1") refuse it; the
    # device module's Stream used to hand out a stream of mps_sim:0 instead.
    with pytest.raises(RuntimeError, match="device index .* out of range.*one device"):
        torch.mps_sim.Stream(device=device)
    with pytest.raises(ValueError, match="needs an mps_sim device"):
        torch.mps_sim.Stream(device="cpu")
    for good in ("mps_sim", "mps_sim:0", torch.device("mps_sim", 0), 0):
        assert torch.mps_sim.Stream(device=good).device == torch.device(DEVICE, 0)


@pytest.mark.parametrize("value", ["False", "", 0, 1, None, 1.0, torch.tensor(False)])
def test_switches_take_only_a_bool(value):
    # bool("False") is True: a string used to turn thread safety on.
    before = torch.mps_sim.is_threadsafe()
    with pytest.raises(TypeError, match="must be a bool"):
        torch.mps_sim.set_threadsafe(value)
    assert torch.mps_sim.is_threadsafe() is before
    with pytest.raises(TypeError, match="must be a bool"):
        torch.mps_sim.set_protections(value)
    if value is not None:  # a keyword left None means "as `on`"
        with pytest.raises(TypeError, match="must be a bool"):
            torch.mps_sim.set_protections(True, domains=value)
    assert all(torch.mps_sim.protections().values())


@pytest.mark.parametrize("setter,value,error,message", [
    ("set_race_window", -1, ValueError, "from 0 to 10,000,000 microseconds, got -1"),
    ("set_race_window", 10_000_001, ValueError, "from 0 to 10,000,000 microseconds"),
    ("set_race_window", 2**40, ValueError, "from 0 to 10,000,000 microseconds"),
    ("set_race_window", 1.5, TypeError, "whole number of microseconds"),
    ("set_race_window", "100", TypeError, "whole number of microseconds"),
    ("set_race_meeting", -5, ValueError, "from 0 to 4,294,967,295 microseconds"),
    ("set_race_meeting", 2**32, ValueError, "from 0 to 4,294,967,295 microseconds"),
])
def test_race_knobs_refuse_out_of_range_values_clearly(setter, value, error, message):
    with pytest.raises(error, match=message):
        getattr(torch.mps_sim, setter)("encoder", value)
    getattr(torch.mps_sim, setter)("encoder", 0)  # in range: accepted (and off)


def test_a_valid_stream_from_the_device_module_replaces_an_invalid_one():
    # torch.accelerator.set_stream(an invalid torch.Stream) marks the thread (Note [Invalid
    # streams in a guard]); torch.mps_sim.set_stream and torch.mps_sim.stream() of a valid
    # stream must replace it as torch.accelerator.set_stream does. Before the fix every op kept
    # raising "current stream (id 99)" while current_stream() named the valid stream.
    if not (hasattr(torch, "accelerator") and hasattr(torch.accelerator, "set_stream")):
        pytest.skip("torch.accelerator.set_stream needs torch >= 2.7")
    privateuse1 = 20  # c10::DeviceType::PrivateUse1
    bad = torch.Stream(stream_id=99, device_index=0, device_type=privateuse1)
    x = torch.ones(4, device=DEVICE)
    torch.accelerator.set_stream(bad)
    with pytest.raises(ValueError, match="id 99"):
        x + 1
    torch.mps_sim.set_stream(torch.mps_sim.default_stream())
    assert (x + 1).cpu().eq(2).all()
    torch.accelerator.set_stream(bad)
    with torch.mps_sim.stream(torch.mps_sim.Stream()):
        assert (x + 2).cpu().eq(3).all()
    torch.accelerator.set_stream(bad)
    torch.mps_sim.set_stream(None)  # back to the thread policy
    assert (x + 3).cpu().eq(4).all()


@pytest.mark.parametrize("function", ["synchronize", "current_stream", "default_stream",
                                      "set_device"])
def test_device_arguments_of_the_device_module_are_checked(function):
    # They used to be ignored: synchronize("cpu") synchronized mps_sim, set_device("cpu") and
    # current_stream("mps_sim:1") returned as if they were mps_sim:0.
    call = getattr(torch.mps_sim, function)
    with pytest.raises(ValueError, match="needs an mps_sim device"):
        call("cpu")
    with pytest.raises((RuntimeError, ValueError), match="out of range|one device"):
        call("mps_sim:1")
    for good in ("mps_sim", "mps_sim:0", torch.device(DEVICE, 0), 0):
        call(good)


@pytest.mark.parametrize("bad_id", [2.7, "3", True])
def test_stream_id_must_be_an_int(bad_id):
    # int(2.7) made it stream 2, int("3") stream 3.
    with pytest.raises(TypeError, match="stream_id must be an int"):
        torch.mps_sim.Stream(stream_id=bad_id)


def test_race_knobs_refuse_a_bool():
    with pytest.raises(TypeError, match="whole number of microseconds, got bool"):
        torch.mps_sim.set_race_window("encoder", True)
    with pytest.raises(TypeError, match="whole number of microseconds, got bool"):
        torch.mps_sim.set_race_meeting("encoder", True)


def test_set_stream_in_a_loop_keeps_the_guard_stack_bounded():
    """Hostile review: every torch.accelerator.set_stream pushed an exchange nobody restores;
    1.5 million calls grew memory by 66 MB (Note [A bounded guard stack]). Guards still
    nest and restore after such a loop."""
    if not hasattr(torch, "accelerator") or not hasattr(torch.accelerator, "set_stream"):
        pytest.skip("torch.accelerator.set_stream needs a newer torch")
    result = {}

    def work():
        streams = [torch.mps_sim.Stream() for _ in range(3)]
        for i in range(3000):
            torch.accelerator.set_stream(streams[i % 3])
        result["depth"] = torch.mps_sim._C._saved_exchange_depth()
        torch.mps_sim.set_stream(streams[0])
        with torch.mps_sim.stream(streams[1]):
            with torch.mps_sim.stream(streams[2]):
                result["inner"] = torch.mps_sim.current_stream().stream_id
            result["middle"] = torch.mps_sim.current_stream().stream_id
        result["outer"] = torch.mps_sim.current_stream().stream_id
        result["ids"] = [s.stream_id for s in streams]
        x = torch.arange(6.0, device=DEVICE)
        result["value"] = (x * 2).cpu()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result["depth"] <= 64  # before the fix: 3000
    ids = result["ids"]
    assert (result["inner"], result["middle"], result["outer"]) == (ids[2], ids[1], ids[0])
    assert torch.equal(result["value"], torch.arange(6.0) * 2)
