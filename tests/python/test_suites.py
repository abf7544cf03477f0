"""The suites, in quick mode: the threaded story on mps_sim with zero violations and
measured stream overlap; bench and stress produce their outputs."""

import json
import subprocess
import sys

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
    # Every check but the speedup one, which needs idle cores a shared CI runner may not have
    # (the exit status and the device-machine runs hold that one).
    for name, ok in checks.items():
        if not name.startswith("speedup"):
            assert ok, (name, proc.stdout[-3000:])
    assert on["verdict"]["violations"] == 0 and on["verdict"]["crashes"] == 0
    assert any(name.startswith("speedup") for name in checks)


def test_bench_and_stress_cli_quick(tmp_path):
    proc = cli("bench", "--device", "mps_sim", "--quick", "--models", "linear", "--threads", "1,2",
               "--mode", "on", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert {(r["threads"], r["outcome"]) for r in rows} == {(1, "ok"), (2, "ok")}
    proc = cli("stress", "--device", "mps_sim", "--quick", "--models", "linear,matmul_512",
               "--threads", "2", "--duration", "1", "--json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "crash rate" in proc.stdout
