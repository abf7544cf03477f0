"""The story: can a user run a model from many threads, safely and faster?

Chapters (each measurement in its own subprocess: Note [Threaded method], rounds.py):
1. thread_safety: 8 threads x 20 iterations of the story block (2 encoder layers, ff 1024,
   B=4), every output checked against the CPU; repeated for several rounds.
2. efficiency: the same block at 1, 2, 4, 8 threads; efficiency = speedup / ideal
   (Note [Efficiency] in report.py), the number the verdict checks.
3. batching: one model at B=8 vs 8 threads x B=1 vs 4 threads x B=2 vs 8 clients x B=1
   through BatchedModule (dynamic batching on parallel streams; serve.py's cell), samples/s.
4. correctness: 8 threads on distinct inputs, max abs diff vs the CPU (< 1e-3).
Run once per mode; `./build.sh story` runs "unsafe" (upstream's behaviour) then "on".
"""

from . import report, rounds, serve

MODEL = "story_block"
THREADS = (1, 2, 4, 8)
# The batching chapter's BatchedModule row: 8 closed-loop clients sending one sample each.
BATCHER = {"clients": 8, "workers": 4, "max_batch": 8, "max_wait_ms": 1.0}
BATCHER_LABEL = (f"{BATCHER['clients']} clients x B=1, BatchedModule "
                 f"(workers={BATCHER['workers']}, max_batch={BATCHER['max_batch']})")
DEFAULT_MODES = ("unsafe", "on")

# The verdict's checks, by key (the JSON's), with what a person reads.
CHECK_LABELS = {
    "no_crashes": "no crashes (no retries)",
    "all_complete_and_correct": "all iterations complete and correct",
    "zero_sim_violations": "zero sim violations (in every round, crashed rounds included)",
    "correct_vs_cpu": "correct vs CPU (max abs diff < 1e-3)",
    "streams_concurrent": "streams used concurrently",
    "efficiency_8_threads": "efficiency at 8 threads >= --min-efficiency",
    "batcher_correct": "BatchedModule: every client's results equal the CPU's, no errors",
    "batcher_beats_batching_and_threading": "BatchedModule >= the best of the other batching rows",
}


def sizes(quick):
    return {"rounds": 2 if quick else 5, "safety_iters": 5 if quick else 20,
            "eff_iters": 6 if quick else 30, "batch_iters": 6 if quick else 30,
            "batcher_seconds": 0.5 if quick else 3.0, "timeout": 300 if quick else 900}


def run_mode(device, mode, quick, min_efficiency, cores):
    s = sizes(quick)
    base = {"device": device, "mode": mode, "model": MODEL, "quick": quick}
    out = {"mode": mode}
    progress = report.Progress(f"story {mode}", s["rounds"] + len(THREADS) + 4 + 1)

    safety = []
    for r in range(s["rounds"]):
        result = rounds.run_round(dict(base, threads=8, iterations=s["safety_iters"], batch=4,
                                       check=True, seed=r), s["timeout"])
        safety.append(result)
        progress.step(f"thread_safety round {r + 1}: {result['outcome']}")
    out["thread_safety"] = safety

    efficiency = {}
    for n in THREADS:
        efficiency[n] = rounds.run_round(dict(base, threads=n, iterations=s["eff_iters"], batch=4),
                                         s["timeout"])
        progress.step(f"efficiency {n} threads: {efficiency[n]['outcome']}")
    for n, result in efficiency.items():
        result["ideal"] = report.ideal_speedup(device, n, cores)
        result["speedup"], result["efficiency"] = report.scaling(
            report.measured(result, "ops_per_s"), report.measured(efficiency[1], "ops_per_s"), n,
            device, cores)
    out["efficiency"] = efficiency

    batching = {}
    for label, n, b in (("1 thread x B=8", 1, 8), ("8 threads x B=1", 8, 1), ("4 threads x B=2", 4, 2)):
        batching[label] = rounds.run_round(dict(base, threads=n, iterations=s["batch_iters"], batch=b),
                                           s["timeout"])
        progress.step(f"batching {label}: {batching[label]['outcome']}")
    out["batching"] = batching
    # Always "on": the batcher's lanes need thread safety's streams; in mode unsafe its parallel
    # lanes would crash like the threads do, which the thread_safety chapter counts already.
    cell = rounds.run_round({"device": device, "model": MODEL, "setup": "batcher", "quick": quick,
                             "seconds": s["batcher_seconds"], "warmup": serve.WARMUP_CALLS,
                             **BATCHER}, s["timeout"], entry=serve.ENTRY)
    serve.classify(cell)
    out["batcher"] = cell
    progress.step(f"batching {BATCHER_LABEL}: {cell['status']}")

    out["correctness"] = rounds.run_round(dict(base, threads=8, iterations=max(2, s["safety_iters"] // 2),
                                               batch=4, check=True, distinct_inputs=True, seed=7),
                                          s["timeout"])
    progress.step(f"correctness: {out['correctness']['outcome']}")
    out["verdict"] = verdict(device, out, min_efficiency,
                             expected=s["rounds"] * 8 * s["safety_iters"])
    return out


def verdict(device, out, min_efficiency, expected):
    """The machine-readable verdict: `checks` maps a key of CHECK_LABELS to {passed, value,
    required}; `passed` is all of them."""
    safety = out["thread_safety"]
    crashes = sum(r["outcome"] in ("crash", "hang") for r in safety)
    finished = [r for r in safety if r["outcome"] not in ("crash", "hang")]
    completed = sum(r.get("completed", 0) for r in finished)
    counted = [r.get("violations") for r in finished if r.get("violations") is not None]
    violations = sum(counted) if counted else None
    overlap = max((r.get("max_active_streams") or 0) for r in safety)
    streams = max(len(r.get("streams_used", [])) for r in safety)
    eff8 = out["efficiency"][8].get("efficiency")
    correct = out["correctness"]
    wrong = sum(r.get("wrong", 0) + r.get("error_count", 0) for r in finished)
    batcher = out["batcher"]
    batcher_rate = report.measured(batcher, "samples_per_s")
    others = [report.measured(r, "samples_per_s") for r in out["batching"].values()]
    best_other = max((v for v in others if v), default=None)

    def check(passed, value, required):
        return {"passed": bool(passed), "value": value, "required": required}

    checks = {
        "no_crashes": check(crashes == 0 and all(r["outcome"] == "ok" for r in safety),
                            crashes, 0),
        "all_complete_and_correct": check(completed == expected and expected > 0 and wrong == 0,
                                          completed, expected),
        # A crashed round died at a violation (the sim aborts as Metal does) before it could
        # report its count: it is not a round with zero violations.
        "zero_sim_violations": check(crashes == 0 and not violations, violations, 0),
        "correct_vs_cpu": check(correct.get("outcome") == "ok"
                                and correct.get("max_abs_diff") is not None
                                and correct["max_abs_diff"] < 1e-3 and correct.get("wrong", 1) == 0,
                                correct.get("max_abs_diff"), 1e-3),
    }
    checks["batcher_correct"] = check(batcher.get("passed", False), batcher.get("status"), "ok")
    checks["batcher_beats_batching_and_threading"] = check(
        batcher_rate is not None and best_other is not None and batcher_rate >= best_other,
        None if not (batcher_rate and best_other) else batcher_rate / best_other, 1.0)
    if device != "cpu":
        checks["streams_concurrent"] = check(streams > 1 and (overlap > 1 or device == "mps"),
                                             overlap, 2)
        checks["efficiency_8_threads"] = check(eff8 is not None and eff8 >= min_efficiency,
                                               eff8, min_efficiency)
    return {"checks": checks, "passed": all(c["passed"] for c in checks.values()),
            "crashes": crashes, "rounds": len(safety), "completed": completed,
            "expected": expected, "violations": violations}


def summarize(meta, result, min_efficiency):
    mode = result["mode"]
    v = result["verdict"]
    lines = [f"## story: mode {report.mode_label(mode)} ({report.title_suffix(meta)})", ""]
    lines.append(f"**thread_safety** (8 threads x iterations, every output checked, "
                 f"{v['rounds']} rounds, each in a subprocess, never retried): "
                 f"{v['completed']}/{v['expected']} complete, {v['crashes']}/{v['rounds']} "
                 f"rounds crashed, {report.cell(v['violations'])} sim violations"
                 + (" in the rounds that finished (a crashed round's process died at its "
                    "first violation, as Metal kills it, before it could count)"
                    if v["crashes"] else ""))
    rows = []
    for i, r in enumerate(result["thread_safety"], 1):
        rows.append([i, r["outcome"],
                     f"{report.cell(report.measured(r, 'completed'))}/{report.cell(r.get('expected'))}",
                     report.measured(r, "error_count"), report.measured(r, "violations"),
                     report.measured(r, "max_active_streams"), (r.get("detail") or "")[:60]])
    lines += ["", report.table(["round", "outcome", "complete", "errors", "violations",
                                "max active streams", "detail"], rows), ""]
    crash_tail = next((r.get("stderr_tail") for r in result["thread_safety"]
                       if r["outcome"] != "ok" and r.get("stderr_tail")), None)
    if crash_tail:
        lines += ["First failed round's last words:", "```", crash_tail, "```", ""]
    rows = []
    for n, r in result["efficiency"].items():
        streams = report.measured(r, "streams_used")
        rows.append([n, r["outcome"], report.measured(r, "ops_per_s"), r.get("speedup"),
                     r.get("ideal"), r.get("efficiency"), report.measured(r, "p50_ms"),
                     report.measured(r, "p99_ms"), len(streams) if streams is not None else None])
    ideal = "n" if meta["device"] == "mps" else f"min(n, {meta['cores']} cores)"
    lines += [f"**efficiency** (story block, B=4; efficiency = speedup / ideal, ideal = {ideal})",
              "", report.table(["threads", "outcome", "ops/s", "speedup", "ideal", "efficiency",
                                "p50 ms", "p99 ms", "streams"], rows), ""]
    rows = [[label, r["outcome"], report.measured(r, "samples_per_s"), None]
            for label, r in result["batching"].items()]
    b = result["batcher"]
    rows.append([BATCHER_LABEL, b["status"], report.measured(b, "samples_per_s"),
                 (b.get("batcher_stats") or {}).get("mean_batch_size")])
    lines += ["**batching vs threading** (the BatchedModule row: closed-loop clients, one shared "
              "model; Note [Serving method] in serve.py)", "",
              report.table(["setup", "outcome", "samples/s", "mean batch"], rows), ""]
    c = result["correctness"]
    lines += [f"**correctness** (8 threads, distinct inputs, vs CPU): outcome {c['outcome']}, "
              f"max abs diff {report.cell(report.measured(c, 'max_abs_diff'))}, wrong outputs "
              f"{report.cell(report.measured(c, 'wrong'))}", ""]
    lines += ["**verdict**: " + ("PASS" if v["passed"] else "FAIL")]
    for key, c in v["checks"].items():
        label = CHECK_LABELS[key]
        if key == "efficiency_8_threads":
            label = f"efficiency at 8 threads >= {min_efficiency:g} (got {report.cell(c['value'])})"
        elif key == "batcher_beats_batching_and_threading":
            label = (f"BatchedModule >= the best of the other batching rows (ratio "
                     f"{report.cell(c['value'])})")
        lines.append(f"- [{'x' if c['passed'] else ' '}] {label}")
    return "\n".join(lines)


def main(args):
    meta = report.run_metadata(args)
    modes = args.mode or list(DEFAULT_MODES)
    results = []
    for mode in modes:
        result = run_mode(args.device, mode, args.quick, args.min_efficiency, meta["cores"])
        results.append(result)
        print(summarize(meta, result, args.min_efficiency), end="\n\n", flush=True)
    if len(results) > 1:
        print(comparison(results))
    # The exit status reflects the thread-safe mode only: "unsafe" and "off" are expected to
    # fail (they are what the project fixes).
    on = [r for r in results if r["mode"] == "on"]
    verdict = {"passed": all(r["verdict"]["passed"] for r in on),
               "by_mode": {r["mode"]: r["verdict"]["passed"] for r in results},
               "min_efficiency": args.min_efficiency}
    report.write_json(args.json, {"suite": "story", **meta, "model": MODEL, "modes": modes,
                                  "verdict": verdict, "results": results})
    return 0 if verdict["passed"] else 1


def comparison(results):
    rows = []
    for r in results:
        v = r["verdict"]
        eff = r["efficiency"]
        rows.append([report.mode_label(r["mode"]), f"{v['crashes']}/{v['rounds']}",
                     f"{v['completed']}/{v['expected']}", v["violations"],
                     report.measured(eff[1], "ops_per_s"), report.measured(eff[8], "ops_per_s"),
                     eff[8].get("efficiency"), "PASS" if v["passed"] else "FAIL"])
    title = " vs ".join(r["mode"] for r in results)
    return f"## {title}\n\n" + report.table(
        ["mode", "crashed rounds", "complete", "violations", "ops/s 1 thread", "ops/s 8 threads",
         "efficiency 8", "verdict"], rows)
