"""What the suites print: `-` for missing cells, one efficiency definition shared by tables and
verdicts, crashed rounds never counted as violation-free, unsafe rows named as such, and the
stats summary."""

import pytest

from mps_threadsafe.suites import bench, report, story, stress


def test_missing_cells_print_a_dash_never_zero_or_none():
    assert report.cell(None) == "-"
    assert report.cell(float("nan")) == "-"
    assert report.cell(0.0) == "0"
    assert report.cell(1234.5) == "1,234"
    assert report.cell(0.2619) == "0.262"
    text = report.table(["a", "b"], [[None, 1.5], ["x", None]])
    assert text.splitlines()[0].startswith("| a")
    assert "None" not in text and "| -" in text


def test_crashed_round_has_no_measurements():
    crashed = {"outcome": "crash", "ops_per_s": 0.0, "detail": "killed by SIGABRT"}
    assert report.measured(crashed, "ops_per_s") is None
    assert report.measured({"outcome": "ok", "ops_per_s": 12.0}, "ops_per_s") == 12.0


@pytest.mark.parametrize("device,threads,cores,ideal", [
    ("mps", 8, 2, 8), ("mps_sim", 8, 2, 2), ("mps_sim", 1, 2, 1), ("cpu", 4, 16, 4)])
def test_ideal_speedup_is_capped_by_cores_where_the_host_does_the_work(device, threads, cores,
                                                                       ideal):
    assert report.ideal_speedup(device, threads, cores) == ideal


def test_bench_rows_use_the_one_efficiency_definition():
    rows = [{"model": "m", "mode": "on", "threads": n, "outcome": "ok", "ops_per_s": ops}
            for n, ops in ((1, 100.0), (2, 180.0), (8, 210.0))]
    rows.append({"model": "m", "mode": "on", "threads": 4, "outcome": "crash"})
    bench.add_scaling(rows, "mps_sim", cores=2)
    by_threads = {r["threads"]: r for r in rows}
    assert by_threads[2]["efficiency"] == pytest.approx(0.9)
    assert by_threads[8]["speedup"] == pytest.approx(2.1)
    assert by_threads[8]["efficiency"] == pytest.approx(2.1 / 2)
    assert by_threads[4]["efficiency"] is None and by_threads[4]["speedup"] is None


def story_result(mode, safety, eff8_ops, device="mps_sim"):
    ok = {"outcome": "ok", "ops_per_s": 100.0, "streams_used": [1, 2]}
    efficiency = {1: dict(ok), 2: dict(ok), 4: dict(ok), 8: dict(ok, ops_per_s=eff8_ops)}
    for n, r in efficiency.items():
        r["speedup"], r["efficiency"] = report.scaling(r["ops_per_s"], 100.0, n, device, 8)
    out = {"mode": mode, "thread_safety": safety, "efficiency": efficiency,
           "batching": {"1 thread x B=8": dict(ok, samples_per_s=10.0)},
           "batcher": dict(ok, samples_per_s=12.0, passed=True, status="ok"),
           "correctness": {"outcome": "ok", "max_abs_diff": 1e-6, "wrong": 0}}
    out["verdict"] = story.verdict(device, out, 0.5, expected=len(safety) * 10)
    return out


def test_efficiency_verdict_uses_the_efficiency_column():
    safe = [{"outcome": "ok", "completed": 10, "expected": 10, "violations": 0, "wrong": 0,
             "error_count": 0, "max_active_streams": 4, "streams_used": [1, 2, 3, 4]}]
    # 8 threads at 2.1x the 1-thread throughput with 8 cores: efficiency 0.26 must FAIL 0.5.
    result = story_result("on", safe, eff8_ops=210.0)
    check = result["verdict"]["checks"]["efficiency_8_threads"]
    assert check["value"] == pytest.approx(result["efficiency"][8]["efficiency"]) == \
        pytest.approx(0.2625)
    assert check["passed"] is False and result["verdict"]["passed"] is False
    assert story_result("on", safe, eff8_ops=600.0)["verdict"]["passed"] is True


def test_crashed_unsafe_rounds_do_not_tick_zero_violations():
    crashed = [{"outcome": "crash", "detail": "killed by SIGABRT", "expected": 10}] * 2
    result = story_result("unsafe", crashed, eff8_ops=600.0)
    checks = result["verdict"]["checks"]
    assert checks["zero_sim_violations"]["passed"] is False
    assert checks["no_crashes"]["passed"] is False
    text = story.summarize({"device": "mps_sim", "cores": 8, "torch": "x", "quick": True},
                           result, 0.5)
    assert "- [ ] zero sim violations" in text
    assert "[x] zero sim violations" not in text
    assert "unsafe (no protections)" in text
    # A crashed round's cells are `-`, not 0.
    assert "| 1       | crash" in text or "| 1 | crash" in text.replace("  ", " ")
    assert "None" not in text


def test_comparison_is_titled_by_the_modes_it_compares():
    safe = [{"outcome": "ok", "completed": 10, "expected": 10, "violations": 0,
             "max_active_streams": 4, "streams_used": [1, 2]}]
    crashed = [{"outcome": "crash", "expected": 10}]
    text = story.comparison([story_result("unsafe", crashed, 600.0),
                             story_result("on", safe, 600.0)])
    assert text.startswith("## unsafe vs on")
    assert "unsafe (no protections)" in text


def test_stress_summary_counts_crashes_and_leaves_unknown_violations_missing():
    rows = [{"outcome": "crash", "mode": "unsafe"},
            {"outcome": "ok", "mode": "unsafe", "completed": 6, "violations": None}]
    s = stress.summarize_mode("unsafe", rows)
    assert s["crashed"] == 1 and s["crash_rate"] == 0.5
    assert s["sim_violations"] is None and s["iterations_complete"] == 6


STATS = {
    "threadsafe": True, "contract_violations": 0, "threads_bound": 4, "threads_released": 4,
    "shared_stream_bindings": 0, "max_active_streams": 3,
    "streams": [{"id": 1, "dispatches": 10, "ops_encoded": 9, "command_buffers_submitted": 2,
                 "queue_waits": 1, "queue_wait_ns": 2_000_000, "overlapped_dispatches": 5,
                 "commits": {"COMMIT": 2, "NONE": 0}, "gpu_errors": 0},
                {"id": 2, "dispatches": 0}],
    "domains": [{"name": "graph:linear", "acquisitions": 3, "waits": 2, "wait_ns": 1_000_000}],
    "protections": {"serial_queue": True, "domains": True, "cross_stream_order": True,
                    "deferred_frees": True},
    "sim": {"kernels_executed": 9, "kernels_failed": 0, "violations": 0,
            "max_concurrent_queues": 2},
    "allocator": {"allocated_bytes": 2**20, "cached_bytes": 0, "pending_frees": 0, "reuses": 3,
                  "host_allocations": 4},
}


def test_stats_summary_reads_like_a_report():
    from mps_threadsafe import stats_summary
    text = stats_summary(STATS)
    assert "thread safety on; protections all on" in text
    assert "2 created, 1 used; at most 3 encoding at once" in text
    assert "most contended: graph:linear (2 waits)" in text
    assert "1.0 MiB in use" in text
    assert text.splitlines()[-1] == "problems: none"
    off = dict(STATS, protections=dict(STATS["protections"], domains=False),
               sim=dict(STATS["sim"], violations=3))
    text = stats_summary(off)
    assert "protections OFF: domains" in text and "problems: 3 sim violations" in text


def test_stats_summary_of_the_live_runtime():
    import torch

    from mps_threadsafe import stats_summary
    (torch.ones(4, device="mps_sim") + 1).cpu()
    text = stats_summary()
    assert "sim GPU:" in text and "kernels run" in text
    # Every key of the live dict is documented in docs/stats.md.
    import pathlib
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "stats.md").read_text()
    live = torch.mps_sim.threadsafe_stats()
    keys = set(live) | set(live["sim"]) | set(live["allocator"]) | set(live["protections"])
    if live["streams"]:
        keys |= set(live["streams"][0])
    if live["domains"]:
        keys |= set(live["domains"][0])
    undocumented = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not undocumented, f"docs/stats.md does not document {undocumented}"
