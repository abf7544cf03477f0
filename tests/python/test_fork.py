"""fork() and multiprocessing (Note [Device use after fork] in python/csrc/fork.cpp).

A fork() child of a process that used the device has none of the sim's GPU threads and may
hold locks no thread will release: every use of the device there must raise a clear
RuntimeError, never hang or abort, while the parent carries on. A fork before any device use
leaves the child free to set up its own device; the 'spawn' start method always works.

Every child is waited for with a deadline, so a hang fails the test instead of hanging CI.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import DEVICE, run_python

BAD_FORK = "Cannot re-initialize mps_sim in forked subprocess"


def wait_for_child(pid, timeout=60):
    """Returns the child's exit status; kills it and fails the test if it outlives `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child was still running after {timeout} s: it hung")
        time.sleep(0.02)


def fork_and_run(child, timeout=60):
    """Runs `child()` in a fork() child; returns (exit status, what it returned or raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            report = child()
            code = 0
        except BaseException as e:  # reported to the parent, which fails the test
            report = f"child raised {type(e).__name__}: {e}"
        try:
            os.write(write_end, report.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    status = wait_for_child(pid, timeout)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    return status, report


def raises_bad_fork(fn):
    try:
        fn()
    except RuntimeError as e:
        assert BAD_FORK in str(e) and "'spawn'" in str(e), str(e)
        return "raised"
    return "no error"


def test_fork_after_use_child_raises_and_parent_keeps_working():
    torch.mps_sim.set_threadsafe(True)
    x = torch.arange(1000, dtype=torch.float32, device=DEVICE) * 2
    pending = x + 1  # left uncommitted on this thread's stream at the fork
    assert not torch.mps_sim._is_in_bad_fork()

    def child():
        assert torch.mps_sim._is_in_bad_fork()
        assert not torch.mps_sim.is_initialized()
        outcomes = {
            "read": raises_bad_fork(lambda: pending.cpu()),  # the first blocking read hung
            "new tensor": raises_bad_fork(lambda: torch.ones(4, device=DEVICE)),
            "op": raises_bad_fork(lambda: x * 3),
            "synchronize": raises_bad_fork(torch.mps_sim.synchronize),
            "stats": raises_bad_fork(torch.mps_sim.threadsafe_stats),
            "stream": raises_bad_fork(torch.mps_sim.current_stream),
            "empty_cache": raises_bad_fork(torch.mps_sim.empty_cache),
        }
        assert set(outcomes.values()) == {"raised"}, outcomes
        # Freeing a parent's tensor in the child is harmless (no abort, no hang).
        only_ref.clear()
        return "ok"

    only_ref = [torch.ones(512, device=DEVICE)]
    status, report = fork_and_run(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, report)
    assert report == "ok"
    # The parent is untouched.
    assert not torch.mps_sim._is_in_bad_fork()
    torch.testing.assert_close(pending.cpu(), torch.arange(1000, dtype=torch.float32) * 2 + 1)
    assert (torch.ones(3, device=DEVICE) * 2).cpu().eq(2).all()


FORK_WHILE_THREADS_RUN = """
    import os, signal, sys, threading, time, torch, mps_threadsafe
    torch.mps_sim.set_threadsafe(True)
    stop = threading.Event()
    def busy():  # keeps streams, queues and the allocator busy while the main thread forks
        y = torch.randn(64, 64, device="mps_sim")
        while not stop.is_set():
            y = (y @ y).tanh()
            y.sum().item()
    workers = [threading.Thread(target=busy) for _ in range(3)]
    [t.start() for t in workers]
    x = torch.randn(256, device="mps_sim") * 2
    time.sleep(0.2)
    pids = []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            try:
                x.cpu()
                print("CHILD read the parent's tensor without an error")
                os._exit(3)
            except RuntimeError as e:
                ok = "Cannot re-initialize mps_sim in forked subprocess" in str(e)
                ok = ok and torch.mps_sim._is_in_bad_fork()
            # A normal interpreter exit: thread-local and atexit teardown run in the child.
            sys.exit(0 if ok else 4)
        pids.append(pid)
    deadline = time.monotonic() + 60
    statuses = []
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses.append(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                statuses.append("hung")
                break
            time.sleep(0.02)
    stop.set()
    [t.join() for t in workers]
    torch.testing.assert_close(x.cpu(), x.cpu())
    print("STATUSES", statuses)
    print("PARENT_OK", bool(torch.mps_sim.threadsafe_stats()["sim"]["violations"] == 0))
"""


def test_fork_while_other_threads_use_the_device_never_hangs_the_child():
    proc = run_python(FORK_WHILE_THREADS_RUN, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STATUSES [0, 0, 0, 0, 0]" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "PARENT_OK True" in proc.stdout


FORK_BEFORE_USE = """
    import os, signal, time, torch, mps_threadsafe
    assert not torch.mps_sim._is_in_bad_fork()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert not torch.mps_sim._is_in_bad_fork()
            torch.mps_sim.set_threadsafe(True)
            y = torch.arange(10.0, device="mps_sim") * 3
            code = 0 if torch.equal(y.cpu(), torch.arange(10.0) * 3) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise SystemExit("the child hung")
        time.sleep(0.02)
    print("CHILD", os.waitstatus_to_exitcode(status))
    print("PARENT", (torch.ones(2, device="mps_sim") + 1).cpu().tolist())
"""


def test_fork_before_use_leaves_the_child_free_to_use_the_device():
    proc = run_python(FORK_BEFORE_USE, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHILD 0" in proc.stdout and "PARENT [2.0, 2.0]" in proc.stdout, proc.stdout


SPAWN_POOL = """
    import multiprocessing as mp
    import torch, mps_threadsafe

    def work(i):
        import torch, mps_threadsafe  # noqa: F401
        torch.mps_sim.set_threadsafe(True)
        x = torch.full((100,), float(i), device="mps_sim")
        return float((x * 2).sum().item()), torch.mps_sim._is_in_bad_fork()

    if __name__ == "__main__":
        torch.ones(2, device="mps_sim").cpu()  # the parent has used the device
        with mp.get_context("spawn").Pool(2) as pool:
            print("RESULTS", pool.map(work, range(4), chunksize=1))
"""


def test_spawn_pool_uses_the_device_in_every_worker(tmp_path):
    script = tmp_path / "spawn_pool.py"
    script.write_text(textwrap.dedent(SPAWN_POOL))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("RESULTS [(0.0, False), (200.0, False), (400.0, False), (600.0, False)]"
            in proc.stdout), proc.stdout


# Note [Abandoned after fork] (aten_mps/runtime.h): a child that exits normally runs the
# runtime's teardown (the main thread's thread_local bindings give its stream back). Here a
# parent thread is parked inside the main thread's stream queue at the fork (the test barrier
# at buffer_uses_before_waits, reached with the queue held), so that queue is locked forever
# in the child: giving the stream back there would wait for it and never exit.
FORK_WHILE_A_THREAD_HOLDS_THE_QUEUE = """
    import os, signal, sys, threading, time, torch, mps_threadsafe
    import mps_threadsafe._C as _C
    torch.mps_sim.set_threadsafe(True)
    x = torch.ones(1024, device="mps_sim") * 2
    x.cpu()
    mine = torch.mps_sim.current_stream()  # the pool stream bound to the main thread
    _C._set_test_barrier("buffer_uses_before_waits", 2)

    def hold_the_queue():  # encodes on the main thread's stream; parks inside its queue
        with mine:
            x + 1

    holder = threading.Thread(target=hold_the_queue)
    holder.start()
    deadline = time.monotonic() + 60
    while _C._test_barrier_arrivals() < 1:  # the holder is inside the queue now
        assert time.monotonic() < deadline, "the holder never reached the barrier"
        time.sleep(0.001)
    pid = os.fork()
    if pid == 0:
        ok = torch.mps_sim._is_in_bad_fork()
        try:
            torch.ones(2, device="mps_sim")
            ok = False
        except RuntimeError as e:
            ok = ok and "Cannot re-initialize mps_sim in forked subprocess" in str(e)
        sys.exit(0 if ok else 4)  # normal exit: thread_local and static teardown run
    status = "hung"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        time.sleep(0.01)
    if status == "hung":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def release_the_holder():  # the barrier's second party, on a stream of its own
        with torch.mps_sim.Stream(stream_id=mine.stream_id % _C.pool_size() + 1):
            x * 3

    releaser = threading.Thread(target=release_the_holder)
    releaser.start()
    releaser.join(60)
    holder.join(60)
    _C._clear_test_hook()
    print("CHILD", status)
    print("PARENT", (x + 1).cpu()[:2].tolist())
"""


def test_child_exits_normally_while_a_parent_thread_held_its_stream_queue():
    proc = run_python(FORK_WHILE_A_THREAD_HOLDS_THE_QUEUE, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "CHILD 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "PARENT [3.0, 3.0]" in proc.stdout, proc.stdout
    # The child's teardown is quiet: the holder's stream block, closed by the child's garbage
    # collection, restores nothing.
    assert "Exception ignored" not in proc.stderr, proc.stderr
