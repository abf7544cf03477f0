"""python -m mps_threadsafe serve-bench: its arguments are refused up front (one line, exit 2),
a tiny real run on mps_sim writes the table, the JSON and the plot, and a wrong result fails
its cell (Note [Serving method] in suites/serve.py)."""

import json
import subprocess
import sys
import time

import pytest
import torch

from mps_threadsafe.__main__ import build_parser
from mps_threadsafe.suites import serve, workloads

PROG = "python -m mps_threadsafe serve-bench"


def cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "mps_threadsafe", *args], capture_output=True,
                          text=True, timeout=timeout)


def run_main(args, capsys):
    from mps_threadsafe.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


BAD_ARGUMENTS = [
    (["--clients", "0"], "0 clients: a client count must be 1 or more"),
    (["--clients", "-2"], "a client count must be 1 or more"),
    (["--clients", "1,x"], "'x' is not a whole number (give client counts like 1,2,4,8)"),
    (["--clients", "2,2"], "repeats a client count"),
    (["--clients", "5000"], "at most 1,024 (each client is a thread)"),
    (["--seconds", "0"], "must be more than 0 seconds"),
    (["--seconds", "-1"], "must be more than 0 seconds"),
    (["--seconds", "soon"], "is not a number of seconds"),
    (["--workers", "0"], "must be 1 or more"),
    (["--workers", "2.5"], "'2.5' is not a whole number"),
    (["--workers", "100000"], "at most 256"),
    (["--repeats", "0"], "must be 1 or more"),
    (["--repeats", "101"], "at most 100 (each round runs a process per setup)"),
    (["--max-batch", "0"], "must be 1 or more"),
    (["--max-batch", "x"], "'x' is not a whole number"),
    (["--max-wait-ms", "-1"], "give a number of milliseconds >= 0"),
    (["--max-wait-ms", "inf"], "give a number of milliseconds >= 0"),
    (["--max-wait-ms", "nan"], "give a number of milliseconds >= 0"),
    (["--max-wait-ms", "soon"], "is not a number of milliseconds"),
    (["--models", "nosuch"], "valid models: linear, mlp, transformer"),
    (["--models", "linear,nosuch"], "unknown model 'nosuch'"),
    (["--json", "/nonexistent/dir/x.json"], "folder /nonexistent/dir does not exist"),
    (["--plot", "/nonexistent/dir/x.png"], "does not exist"),
    (["--device", "gpu"], "invalid choice: 'gpu'"),
    (["--iterations", "3"], "unrecognized arguments: --iterations 3"),
    (["--threads", "2"], "unrecognized arguments: --threads 2"),
    (["--clients", "2", "extra"], "unrecognized arguments: extra"),
]


@pytest.mark.parametrize("args,reason", BAD_ARGUMENTS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_argument_is_one_line_and_exit_2(args, reason, capsys):
    code, out, err = run_main(["serve-bench", *args], capsys)
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert reason in lines[0], lines[0]
    assert lines[0].startswith(f"{PROG}: error: "), lines[0]
    assert lines[0].endswith(f"(see {PROG} --help)"), lines[0]


def test_bad_argument_from_the_shell_exits_2_before_any_work(tmp_path):
    started = time.monotonic()
    proc = cli("serve-bench", "--models", "transformer", "--seconds", "0")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - started < 90  # refused while parsing: no cell ran


def test_help(capsys):
    code, out, _ = run_main(["serve-bench", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert text.startswith(f"usage: {PROG}")
    for word in ("--clients", "--seconds", "--workers", "--max-batch", "--max-wait-ms",
                 "--require-goal", "--plot", "--json", "transformer,story_block",
                 "one-thread batching"):
        assert word in text, (word, out)
    for word in ("--mode {", "--threads", "--duration", "--iterations"):
        assert word not in text, (word, out)
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "serve-bench" in out


def test_tiny_run_on_mps_sim(tmp_path):
    """3 setups x 2 client counts, each cell a subprocess of 0.2 s."""
    proc = cli("serve-bench", "--device", "mps_sim", "--quick", "--models", "linear",
               "--clients", "1,2", "--seconds", "0.2", "--json", str(tmp_path / "s.json"),
               "--plot", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "| clients" in out and "batcher / best other" in out and "None" not in out
    assert "**verdict (linear)**" in out and "6 of 6 ran ok and correct" in out
    assert "p99 at 1 client" in out

    data = json.loads((tmp_path / "s.json").read_text())
    assert data["suite"] == "serve-bench" and data["device"] == "mps_sim" and data["quick"]
    assert data["setups"] == ["threads", "batching", "batcher"]
    assert data["clients"] == [1, 2] and data["seconds"] == 0.2
    assert (data["workers"], data["max_batch"], data["max_wait_ms"]) == (8, 8, 1.0)
    for key in ("torch", "python", "machine", "cores", "commit", "time_utc", "argv"):
        assert key in data
    cells = data["results"]
    assert {(c["setup"], c["clients"]) for c in cells} == {
        (s, n) for s in ("threads", "batching", "batcher") for n in (1, 2)}
    for c in cells:
        assert c["outcome"] == "ok" and c["status"] == "ok" and c["passed"], c
        assert c["error_count"] == 0 and c["wrong"] == 0 and c["max_abs_diff"] < 1e-3
        assert c["checked"] == 2 * c["clients"]  # each client's first and last result
        assert c["completed"] >= c["clients"] and c["samples_per_s"] > 0
        assert 0 < c["p50_ms"] <= c["p99_ms"]
        assert c["violations"] == 0
        stats = c["batcher_stats"]
        if c["setup"] == "threads":
            assert stats is None
            assert len(c["streams_used"]) == c["clients"]  # each thread its own stream
        else:
            assert stats["workers"] == (1 if c["setup"] == "batching" else 8)
            # The measured batcher's counters hold the measured calls only (the warm-up ran
            # through another one).
            assert stats["completed"] == c["completed"] and stats["failed"] == 0
            assert stats["mean_batch_size"] >= 1 and stats["max_lanes_busy"] >= 1
            assert stats["queue_wait_p99_ms"] is not None

    verdict = data["verdict"]
    assert verdict["passed"] is True and verdict["cells"] == 6 and verdict["cells_failed"] == 0
    assert isinstance(verdict["goal_passed"], bool) and verdict["goal_required"] is False
    linear = verdict["by_model"]["linear"]
    throughput = linear["throughput_vs_best_other"]
    assert set(throughput["ratios"]) == {"1", "2"} and throughput["required"] == 1.0
    assert throughput["passed"] == all(r >= 1.0 for r in throughput["ratios"].values())
    latency = linear["p99_at_1_client"]
    assert latency["factor"] == pytest.approx(latency["batcher_p99_ms"] / latency["threads_p99_ms"])
    assert latency["passed"] == (latency["factor"] <= 2.0)
    assert linear["passed"] == (throughput["passed"] and latency["passed"])
    assert (tmp_path / "s.png").stat().st_size > 10_000


# ---- A wrong result fails its cell --------------------------------------------------------


def off_by_a_little(master, device):
    """The device copy of the model with every parameter moved by 0.01: its results differ
    from the CPU master's by far more than the 1e-3 tolerance."""
    model = copy_of(master, device)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    return model


copy_of = workloads.replicate


def cpu_spec(setup, clients=2):
    return {"device": "cpu", "model": "linear", "setup": setup, "clients": clients,
            "seconds": 0.05, "max_batch": 8, "workers": 1 if setup == "batching" else 2,
            "max_wait_ms": 0.0, "warmup": 1}


@pytest.mark.parametrize("setup", serve.SETUPS)
def test_a_wrong_result_fails_the_cell(setup, monkeypatch):
    right = serve.classify(dict(serve.run_cell(cpu_spec(setup)), outcome="ok"))
    assert right["status"] == "ok" and right["wrong"] == 0 and right["checked"] == 4

    monkeypatch.setattr(workloads, "replicate", off_by_a_little)
    wrong = serve.classify(dict(serve.run_cell(cpu_spec(setup)), outcome="ok"))
    assert wrong["checked"] == 4 and wrong["wrong"] == 4  # first and last of both clients
    assert wrong["max_abs_diff"] >= 1e-3 and wrong["error_count"] == 0
    assert wrong["status"] == "wrong" and wrong["passed"] is False


def parse(*args):
    args = build_parser().parse_args(["serve-bench", *args])
    args.device = args.device or "cpu"
    return args


def test_a_wrong_cell_makes_the_run_fail(tmp_path, monkeypatch, capsys):
    """The whole command with each cell run in this process on the cpu (the subprocess is
    the only thing replaced): the batcher's results are made wrong, so the run exits 1."""
    def run_here(spec, timeout, entry):
        assert entry == "_serve_round" and timeout > spec["seconds"]
        with monkeypatch.context() as patch:
            if spec["setup"] == "batcher":
                patch.setattr(workloads, "replicate", off_by_a_little)
            return dict(serve.run_cell(dict(spec, warmup=1)), outcome="ok")

    args = parse("--device", "cpu", "--models", "linear", "--clients", "1", "--seconds", "0.05",
                 "--workers", "2", "--json", str(tmp_path / "w.json"))
    assert serve.main(args, run_round=run_here) == 1
    out = capsys.readouterr().out
    assert "batcher wrong" in out and "2 of 3 ran ok and correct" in out
    verdict = json.loads((tmp_path / "w.json").read_text())["verdict"]
    assert verdict["passed"] is False and verdict["cells_failed"] == 1
    assert verdict["failed_cells"] == ["linear batcher x1: wrong"]
    # A failed cell has no measurement to compare: the goal checks fail, never pass on it.
    assert verdict["by_model"]["linear"]["throughput_vs_best_other"]["ratios"] == {"1": None}
    assert verdict["by_model"]["linear"]["p99_at_1_client"]["passed"] is False


def fake_cell(spec, rate, p99):
    return {"outcome": "ok", "completed": 10, "checked": 2 * spec["clients"], "wrong": 0,
            "error_count": 0, "errors": [], "samples_per_s": rate, "p50_ms": p99 / 2,
            "p99_ms": p99, "max_abs_diff": 0.0, "violations": 0, "batcher_stats": None}


@pytest.mark.parametrize("batcher_rate,require,code", [
    (90.0, False, 0),   # goal not met, reported only
    (90.0, True, 1),    # goal not met and required
    (150.0, True, 0),   # goal met
])
def test_require_goal(batcher_rate, require, code, capsys):
    def run_fake(spec, timeout, entry):
        rate = batcher_rate if spec["setup"] == "batcher" else 100.0
        return fake_cell(spec, rate, p99=3.0)

    args = parse("--models", "linear", "--clients", "1,2", *(["--require-goal"] if require else []))
    assert serve.main(args, run_round=run_fake) == code
    out = capsys.readouterr().out
    met = batcher_rate > 100
    ratios = "by clients: 1: 1.5, 2: 1.5;" if met else "by clients: 1: 0.9, 2: 0.9;"
    assert ("PASS (batcher / best other" if met else "FAIL (batcher / best other") in out
    assert ratios in out, out
    assert ("**goal** (both checks, every model): met" in out) == met


def test_crash_and_hang_are_failed_cells_with_no_measurement():
    crash = serve.classify({"outcome": "crash", "detail": "killed by SIGABRT",
                            "samples_per_s": None})
    hang = serve.classify({"outcome": "hang", "detail": "no result within 300s"})
    assert (crash["status"], crash["passed"]) == ("crash", False)
    assert (hang["status"], hang["passed"]) == ("hang", False)
    ok = serve.classify(fake_cell({"clients": 1}, 100.0, 2.0))
    cells = [dict(crash, setup="batcher", clients=1), dict(ok, setup="threads", clients=1),
             dict(ok, setup="batching", clients=1)]
    verdict = serve.model_verdict(cells, [1])
    assert verdict["throughput_vs_best_other"]["ratios"] == {"1": None}
    assert verdict["passed"] is False


def test_repeats_interleave_the_setups_and_the_ratio_is_the_median_of_the_rounds(tmp_path,
                                                                                   capsys):
    """Note [Repeated, interleaved cells]: each round runs the three setups back to back in a
    rotated order; a round's ratio compares its own cells; the verdict takes their median, so
    one slow round of the batcher does not decide the goal."""
    order = []
    batcher_by_round = {0: 120.0, 1: 80.0, 2: 110.0}  # round 2 (index 1) is a slow one
    seen = {}

    def run_fake(spec, timeout, entry):
        key = (spec["clients"], spec["setup"])
        r = seen[key] = seen.get(key, -1) + 1
        order.append((spec["clients"], r, spec["setup"]))
        rate = batcher_by_round[r] if spec["setup"] == "batcher" else 100.0 + r
        return fake_cell(spec, rate, p99=3.0)

    args = parse("--models", "linear", "--clients", "1", "--repeats", "3",
                 "--json", str(tmp_path / "r.json"))
    assert serve.main(args, run_round=run_fake) == 0
    assert order == [(1, 0, "threads"), (1, 0, "batching"), (1, 0, "batcher"),
                     (1, 1, "batching"), (1, 1, "batcher"), (1, 1, "threads"),
                     (1, 2, "batcher"), (1, 2, "threads"), (1, 2, "batching")]
    data = json.loads((tmp_path / "r.json").read_text())
    throughput = data["verdict"]["by_model"]["linear"]["throughput_vs_best_other"]
    assert throughput["ratios_by_round"]["1"] == pytest.approx([1.2, 80 / 101, 110 / 102])
    assert throughput["ratios"]["1"] == pytest.approx(110 / 102) and throughput["passed"]
    assert data["verdict"]["cells"] == 9 and len(data["results"]) == 9
    batcher = next(c for c in data["summary"] if c["setup"] == "batcher")
    assert batcher["samples_per_s"] == 110.0 and batcher["rounds"] == 3
    assert batcher["samples_per_s_by_round"] == [120.0, 80.0, 110.0]
    out = capsys.readouterr().out
    assert "3 interleaved rounds per cell" in out and "By round" in out
    assert "1.08 (0.792-1.2)" in out or "1.08 (0.79-1.2)" in out, out


def test_a_failed_round_fails_its_cell_and_the_ratio(capsys):
    def run_fake(spec, timeout, entry):
        cell = fake_cell(spec, 150.0 if spec["setup"] == "batcher" else 100.0, p99=3.0)
        if spec["setup"] == "threads" and run_fake.threads_seen:
            cell = {"outcome": "crash", "detail": "killed by SIGSEGV"}
        run_fake.threads_seen += spec["setup"] == "threads"
        return cell
    run_fake.threads_seen = 0

    args = parse("--models", "linear", "--clients", "1", "--repeats", "2")
    assert serve.main(args, run_round=run_fake) == 1
    out = capsys.readouterr().out
    assert "threads x1 round 2: crash: killed by SIGSEGV" in out
    assert "5 of 6 ran ok and correct" in out and "1: -" in out, out


def test_the_p99_factor_is_the_median_of_the_rounds_own_factors(capsys):
    """Review finding: the ratio of the median p99s passed 2x while two of three rounds broke
    it; each round's factor compares its own cells, as the throughput ratio does."""
    threads_p99, batcher_p99 = [1.0, 4.0, 5.0], [2.2, 9.0, 7.9]
    seen = {}

    def run_fake(spec, timeout, entry):
        r = seen[spec["setup"]] = seen.get(spec["setup"], -1) + 1
        p99 = {"threads": threads_p99, "batcher": batcher_p99}.get(spec["setup"], [3.0] * 3)[r]
        return fake_cell(spec, 100.0, p99=p99)

    args = parse("--models", "linear", "--clients", "1", "--repeats", "3")
    serve.main(args, run_round=run_fake)
    out = capsys.readouterr().out
    assert "p99 at 1 client <= 2x threads-alone p99 at 1 client: FAIL" in out, out
    assert "= 2.2x)" in out  # median of 2.2, 2.25, 1.58
