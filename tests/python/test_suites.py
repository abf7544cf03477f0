"""The suites, in quick mode: the threaded story on mps_sim with zero violations and
measured stream overlap; bench and stress produce their outputs."""

import json
import subprocess
import sys

import pytest

from mps_threadsafe.suites import rounds
from mps_threadsafe.suites.device import Device
from mps_threadsafe.suites.threads import run_threads


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mps_threadsafe", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_story_thread_safety_round_in_a_subprocess():
    result = rounds.run_round({"device": "mps_sim", "mode": "on", "model": "story_block",
                               "threads": 8, "iterations": 4, "batch": 4, "check": True,
                               "quick": True}, timeout=300)
    assert result["outcome"] == "ok", result
    assert result["completed"] == result["expected"] == 32
    assert result["error_count"] == 0 and result["wrong"] == 0
    assert result["violations"] == 0
    assert len(result["streams_used"]) == 8  # each thread its own stream
    assert result["max_active_streams"] > 1  # and they were in use at the same time


def test_unsafe_round_is_counted_as_a_crash():
    result = rounds.run_round({"device": "mps_sim", "mode": "unsafe", "model": "transformer",
                               "threads": 8, "iterations": 10, "quick": True}, timeout=300)
    assert result["outcome"] == "crash", result
    assert "SIG" in result["detail"]


def test_run_threads_on_cpu_is_a_no_op_device():
    result = run_threads(Device("cpu"), "linear", threads=2, iterations=3, check=True)
    assert result["completed"] == 6 and result["max_abs_diff"] < 1e-3


def test_story_cli_quick(tmp_path):
    out = tmp_path / "story.json"
    proc = cli("story", "--device", "mps_sim", "--quick", "--mode", "on", "--json", str(out))
    assert "**verdict**" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    on = data["results"][0]
    checks = on["verdict"]["checks"]
    # Every check but the two that measure speed, which need idle cores a shared CI runner may
    # not have (the exit status and the device-machine runs hold those).
    for key, check in checks.items():
        if key not in ("efficiency_8_threads", "batcher_beats_batching_and_threading"):
            assert check["passed"], (key, check, proc.stdout[-3000:])
    assert on["verdict"]["violations"] == 0 and on["verdict"]["crashes"] == 0
    assert on["batcher"]["passed"] and on["batcher"]["samples_per_s"] > 0
    assert "BatchedModule" in proc.stdout
    # The verdict's efficiency is the efficiency column's (Note [Efficiency]).
    assert checks["efficiency_8_threads"]["value"] == on["efficiency"]["8"]["efficiency"]
    assert data["verdict"]["by_mode"] == {"on": on["verdict"]["passed"]}
    assert_run_metadata(data, device="mps_sim", quick=True)


def assert_run_metadata(data, device, quick):
    import platform

    import torch
    assert data["device"] == device and data["quick"] is quick
    assert data["torch"] == torch.__version__
    assert data["python"] == platform.python_version()
    assert data["machine"]["arch"] == platform.machine()
    assert isinstance(data["cores"], int) and data["cores"] >= 1
    assert "commit" in data  # None outside a git checkout
    assert data["time_utc"].endswith("+00:00")
    assert isinstance(data["verdict"]["passed"], bool)


def test_bench_and_stress_cli_quick(tmp_path):
    proc = cli("bench", "--device", "mps_sim", "--quick", "--models", "linear", "--threads", "1,2",
               "--mode", "on", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    rows = data["results"]
    assert {(r["threads"], r["outcome"]) for r in rows} == {(1, "ok"), (2, "ok")}
    for r in rows:  # one definition: efficiency = speedup / ideal
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal"])
    assert_run_metadata(data, device="mps_sim", quick=True)
    assert data["verdict"] == {"passed": True, "on_rounds": 2, "on_rounds_failed": 0}
    assert (tmp_path / "b.png").stat().st_size > 10_000
    assert "| model" in proc.stdout and "None" not in proc.stdout

    # Two models x one thread count in 1 s: every configuration still runs (--duration is a
    # minimum for the first pass, never a reason to skip one).
    proc = cli("stress", "--device", "mps_sim", "--quick", "--models", "linear,matmul_512",
               "--threads", "2", "--duration", "1", "--json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "crash rate" in proc.stdout and "all 2 configurations" in proc.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert {(r["model"], r["threads"]) for r in data["results"]} == {("linear", 2), ("matmul_512", 2)}
    assert data["verdict"]["passed"] is True
    assert data["verdict"]["by_mode"]["on"]["crashed"] == 0
    assert_run_metadata(data, device="mps_sim", quick=True)
