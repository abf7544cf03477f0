"""Rounds as fork()s of a warm interpreter (Note [Forked rounds] in suites/forks.py): the same
outcomes as a fresh interpreter's round (ok with its result, a crash counted, a hang killed),
one server runs round after round, and a run stopped mid-round leaves no round behind."""

import os
import pathlib
import signal
import threading
import time

import pytest

from mps_threadsafe.suites import forks, rounds

SAFE_ROUND = {"device": "mps_sim", "mode": "on", "model": "story_block", "threads": 8,
              "iterations": 4, "batch": 4, "check": True, "quick": True}
UNSAFE_ROUND = {"device": "mps_sim", "mode": "unsafe", "model": "transformer", "threads": 8,
                "iterations": 10, "quick": True}
LONG_ROUND = dict(SAFE_ROUND, iterations=100_000)


def assert_ok(result):
    assert result["outcome"] == "ok", result
    assert result["completed"] == result["expected"] == 32
    assert result["error_count"] == 0 and result["wrong"] == 0 and result["violations"] == 0
    assert len(result["streams_used"]) == 8 and result["max_active_streams"] > 1


def test_a_forked_round_runs_in_a_process_of_its_own_with_its_own_runtime():
    with forks.ForkServer() as server:
        first = server.run_round(SAFE_ROUND, timeout=300)
        second = server.run_round(SAFE_ROUND, timeout=300)
        assert server._forkable
    assert_ok(first)
    assert_ok(second)


def test_a_crash_in_a_forked_round_is_counted_and_the_next_round_runs():
    with forks.ForkServer() as server:
        crashed = server.run_round(UNSAFE_ROUND, timeout=300)
        after = server.run_round(SAFE_ROUND, timeout=300)
    assert crashed["outcome"] == "crash" and "SIG" in crashed["detail"], crashed
    assert crashed["stderr_tail"], crashed  # the round's own last words reach the parent
    assert_ok(after)


def test_a_forked_round_past_its_timeout_is_a_hang_killed_by_the_server():
    with forks.ForkServer() as server:
        began = time.monotonic()
        hung = server.run_round(LONG_ROUND, timeout=3)
        assert time.monotonic() - began < 60
        after = server.run_round(SAFE_ROUND, timeout=300)
    assert hung == {"outcome": "hang", "detail": "no result within 3s",
                    "stderr_tail": hung["stderr_tail"]}
    assert_ok(after)


def test_an_entry_that_is_not_a_round_fails_that_round_and_a_new_server_takes_the_next():
    with forks.ForkServer() as server:
        refused = server.run_round(SAFE_ROUND, timeout=60, entry="_fork_server")
        after = server.run_round(SAFE_ROUND, timeout=300)
    assert refused["outcome"] == "error" and "fork server failed" in refused["detail"], refused
    assert "no round entry point '_fork_server'" in refused["stderr_tail"]
    assert_ok(after)


def test_a_runtime_made_at_import_makes_every_round_a_fresh_interpreter(monkeypatch, capfd):
    """Review finding: MPS_SIM_THREADSAFE=1 makes the runtime at import, so no fork of the
    server could use the device; its probe fork says so, and rounds are spawned instead."""
    monkeypatch.setenv("MPS_SIM_THREADSAFE", "1")
    with forks.ForkServer() as server:
        result = server.run_round(SAFE_ROUND, timeout=300)
        assert not server._forkable
    assert_ok(result)
    assert "each round runs in a fresh interpreter instead" in capfd.readouterr().err


def children_of(pid):
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


@pytest.mark.skipif(not pathlib.Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_run_interrupted_mid_round_kills_the_round():
    """A Ctrl-C in the parent while a round runs: leaving the server's `with` ends the server,
    whose SIGTERM handler kills the round first, so no round outlives the run."""
    main = threading.get_ident()
    seen = {}

    def interrupt_once_the_round_runs(server):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            proc = server._proc
            kids = children_of(proc.pid) if proc is not None else []
            if kids:
                seen["round"] = kids[0]
                signal.pthread_kill(main, signal.SIGINT)
                return
            time.sleep(0.01)

    with pytest.raises(KeyboardInterrupt):
        with forks.ForkServer() as server:
            server.run_round(SAFE_ROUND, timeout=300)  # the server is up
            threading.Thread(target=interrupt_once_the_round_runs, args=(server,)).start()
            server.run_round(LONG_ROUND, timeout=300)
    deadline = time.monotonic() + 30
    while pathlib.Path(f"/proc/{seen['round']}").exists():
        status = pathlib.Path(f"/proc/{seen['round']}/status").read_text()
        if "State:\tZ" in status:  # killed, waiting to be reaped by init
            break
        assert time.monotonic() < deadline, "the round outlived the run"
        time.sleep(0.05)


@pytest.mark.parametrize("code,status", [(None, 0), (0, 0), (3, 3), (256 + 5, 5),
                                         ("a message", 1), (True, 1)])
def test_a_round_exits_with_pythons_exit_status_rules(code, status):
    assert forks._exit_code(code) == status


@pytest.mark.parametrize("device,forked", [("mps_sim", True), ("cpu", True), ("mps", False)])
def test_rounds_are_forked_only_where_fork_is_safe(device, forked):
    runner = forks.rounds_runner(device)
    with runner:
        assert isinstance(runner, forks.ForkServer) == (forked and hasattr(os, "fork"))
        if not forked:
            assert runner.run_round is rounds.run_round
