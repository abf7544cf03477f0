"""Rounds as fork()s of a warm interpreter (Note [Forked rounds] in suites/forks.py): the same
outcomes as a fresh interpreter's round (ok with its result, a crash counted, a hang killed),
and one server runs round after round."""

import os
import time

import pytest

from mps_threadsafe.suites import forks, rounds

SAFE_ROUND = {"device": "mps_sim", "mode": "on", "model": "story_block", "threads": 8,
              "iterations": 4, "batch": 4, "check": True, "quick": True}
UNSAFE_ROUND = {"device": "mps_sim", "mode": "unsafe", "model": "transformer", "threads": 8,
                "iterations": 10, "quick": True}


def test_a_forked_round_runs_in_a_process_of_its_own_with_its_own_runtime():
    with forks.ForkServer() as server:
        first = server.run_round(SAFE_ROUND, timeout=300)
        second = server.run_round(SAFE_ROUND, timeout=300)
    for result in (first, second):
        assert result["outcome"] == "ok", result
        assert result["completed"] == result["expected"] == 32
        assert result["error_count"] == 0 and result["wrong"] == 0 and result["violations"] == 0
        assert len(result["streams_used"]) == 8 and result["max_active_streams"] > 1


def test_a_crash_in_a_forked_round_is_counted_and_the_next_round_runs():
    with forks.ForkServer() as server:
        crashed = server.run_round(UNSAFE_ROUND, timeout=300)
        after = server.run_round(SAFE_ROUND, timeout=300)
    assert crashed["outcome"] == "crash" and "SIG" in crashed["detail"], crashed
    assert crashed["stderr_tail"], crashed  # the round's own last words reach the parent
    assert after["outcome"] == "ok", after


def test_a_forked_round_past_its_timeout_is_a_hang_killed_by_the_parent():
    with forks.ForkServer() as server:
        began = time.monotonic()
        hung = server.run_round(dict(SAFE_ROUND, iterations=100_000), timeout=3)
        assert time.monotonic() - began < 60
        after = server.run_round(SAFE_ROUND, timeout=300)
    assert hung == {"outcome": "hang", "detail": "no result within 3s",
                    "stderr_tail": hung["stderr_tail"]}
    assert after["outcome"] == "ok", after


def test_an_entry_that_is_not_a_round_fails_that_round_and_a_new_server_takes_the_next():
    with forks.ForkServer() as server:
        refused = server.run_round(SAFE_ROUND, timeout=60, entry="_fork_server")
        after = server.run_round(SAFE_ROUND, timeout=300)
    assert refused["outcome"] == "error" and "fork server failed" in refused["detail"], refused
    assert "no round entry point '_fork_server'" in refused["stderr_tail"]
    assert after["outcome"] == "ok", after


@pytest.mark.parametrize("device,forked", [("mps_sim", True), ("cpu", True), ("mps", False)])
def test_rounds_are_forked_only_where_fork_is_safe(device, forked):
    runner = forks.rounds_runner(device)
    with runner:
        assert isinstance(runner, forks.ForkServer) == (forked and hasattr(os, "fork"))
        if not forked:
            assert runner.run_round is rounds.run_round
