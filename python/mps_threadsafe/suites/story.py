"""The story: can a user run a model from many threads, safely and faster?

Chapters (each measurement in its own subprocess: Note [Threaded method], rounds.py):
1. thread_safety: 8 threads x 20 iterations of the story block (2 encoder layers, ff 1024,
   B=4), every output checked against the CPU; repeated for several rounds.
2. efficiency: the same block at 1, 2, 4, 8 threads; efficiency = ops_n / ops_1 / n.
3. batching: one model at B=8 vs 8 threads x B=1 vs 4 threads x B=2 (samples/s).
4. correctness: 8 threads on distinct inputs, max abs diff vs the CPU (< 1e-3).
Run once per mode; `./build.sh story` runs "unsafe" (upstream's behaviour) then "on".
"""

import os

from . import report, rounds


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1

MODEL = "story_block"
THREADS = (1, 2, 4, 8)


def sizes(quick):
    return {"rounds": 2 if quick else 5, "safety_iters": 5 if quick else 20,
            "eff_iters": 6 if quick else 30, "batch_iters": 6 if quick else 30,
            "timeout": 300 if quick else 900}


def run_mode(device, mode, quick, min_efficiency):
    s = sizes(quick)
    base = {"device": device, "mode": mode, "model": MODEL, "quick": quick}
    out = {"mode": mode}
    progress = report.Progress(f"story {mode}", s["rounds"] + len(THREADS) + 3 + 1)

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
    one = efficiency[1].get("ops_per_s") or 0.0
    for n, result in efficiency.items():
        result["efficiency"] = (result.get("ops_per_s", 0.0) / one / n) if one else 0.0
    out["efficiency"] = efficiency

    batching = {}
    for label, n, b in (("1 thread x B=8", 1, 8), ("8 threads x B=1", 8, 1), ("4 threads x B=2", 4, 2)):
        batching[label] = rounds.run_round(dict(base, threads=n, iterations=s["batch_iters"], batch=b),
                                           s["timeout"])
        progress.step(f"batching {label}: {batching[label]['outcome']}")
    out["batching"] = batching

    out["correctness"] = rounds.run_round(dict(base, threads=8, iterations=max(2, s["safety_iters"] // 2),
                                               batch=4, check=True, distinct_inputs=True, seed=7),
                                          s["timeout"])
    progress.step(f"correctness: {out['correctness']['outcome']}")
    out["verdict"] = verdict(device, out, min_efficiency, expected=s["rounds"] * 8 * s["safety_iters"])
    return out


def verdict(device, out, min_efficiency, expected):
    """Pass/fail lines. Efficiency passes on good scaling (>= min_efficiency at 8 threads)."""
    safety = out["thread_safety"]
    crashes = sum(r["outcome"] == "crash" for r in safety)
    completed = sum(r.get("completed", 0) for r in safety)
    violations = sum(r.get("violations") or 0 for r in safety)
    overlap = max((r.get("max_active_streams") or 0) for r in safety)
    streams = max(len(r.get("streams_used", [])) for r in safety)
    eff8 = out["efficiency"][8].get("efficiency", 0.0)
    # The sim's GPU is the host CPU: 8 queues cannot run faster than the cores allow, so on
    # mps_sim and cpu the bar is a share of the core-bound ideal speedup min(8, cores).
    ideal = 8 if device == "mps" else min(8, usable_cores())
    speedup8 = eff8 * 8
    correct = out["correctness"]
    checks = {
        "no crashes (no retries)": crashes == 0 and all(r["outcome"] == "ok" for r in safety),
        "all iterations complete and correct": completed == expected and expected > 0
        and sum(r.get("wrong", 0) + r.get("error_count", 0) for r in safety) == 0,
        "zero sim violations": violations == 0,
        "correct vs CPU (max abs diff < 1e-3)": correct.get("outcome") == "ok"
        and correct.get("max_abs_diff") is not None and correct["max_abs_diff"] < 1e-3
        and correct.get("wrong", 1) == 0,
    }
    if device != "cpu":
        checks["streams used concurrently"] = streams > 1 and (overlap > 1 or device == "mps")
        checks[f"speedup at 8 threads >= {min_efficiency:.0%} of ideal {ideal}x "
               f"(got {speedup8:.2f}x)"] = speedup8 >= min_efficiency * ideal
    return {"checks": checks, "passed": all(checks.values()), "crashes": crashes,
            "rounds": len(safety), "completed": completed, "expected": expected,
            "violations": violations}


def summarize(device, result):
    mode = result["mode"]
    v = result["verdict"]
    lines = [f"## story on {device}, mode `{mode}`", ""]
    lines.append(f"**thread_safety** (8 threads x iterations, every output checked, "
                 f"{v['rounds']} rounds, each in a subprocess, never retried): "
                 f"{v['completed']}/{v['expected']} complete, {v['crashes']}/{v['rounds']} "
                 f"rounds crashed, {v['violations']} sim violations"
                 + (" counted in rounds that finished (a crashed round's process aborted at its "
                    "first violation, as Metal does)" if v["crashes"] else ""))
    rows = []
    for i, r in enumerate(result["thread_safety"], 1):
        rows.append([i, r["outcome"], f"{r.get('completed', '-')}/{r.get('expected', '-')}",
                     r.get("error_count", "-"), r.get("violations", "-"),
                     r.get("max_active_streams", "-"), (r.get("detail") or "")[:60]])
    lines += ["", report.table(["round", "outcome", "complete", "errors", "violations",
                                "max active streams", "detail"], rows), ""]
    crash_tail = next((r.get("stderr_tail") for r in result["thread_safety"]
                       if r["outcome"] != "ok" and r.get("stderr_tail")), None)
    if crash_tail:
        lines += ["First failed round's last words:", "```", crash_tail, "```", ""]
    rows = []
    for n, r in result["efficiency"].items():
        rows.append([n, r["outcome"], r.get("ops_per_s", 0.0), r.get("efficiency", 0.0),
                     r.get("p50_ms", 0.0), r.get("p99_ms", 0.0), len(r.get("streams_used", []))])
    lines += ["**efficiency** (story block, B=4)", "",
              report.table(["threads", "outcome", "ops/s", "efficiency", "p50 ms", "p99 ms",
                            "streams"], rows), ""]
    rows = [[label, r["outcome"], r.get("samples_per_s", 0.0)] for label, r in result["batching"].items()]
    lines += ["**batching vs threading**", "", report.table(["setup", "outcome", "samples/s"], rows), ""]
    c = result["correctness"]
    lines += [f"**correctness** (8 threads, distinct inputs, vs CPU): outcome {c['outcome']}, "
              f"max abs diff {c.get('max_abs_diff')}, wrong outputs {c.get('wrong', '-')}", ""]
    lines += ["**verdict**: " + ("PASS" if v["passed"] else "FAIL")]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in v["checks"].items()]
    return "\n".join(lines)


def main(args):
    modes = args.mode or (["unsafe", "on"])
    results = []
    for mode in modes:
        result = run_mode(args.device, mode, args.quick, args.min_efficiency)
        results.append(result)
        print(summarize(args.device, result), end="\n\n", flush=True)
    if len(results) == 2:
        print(comparison(results))
    report.write_json(args.json, {"suite": "story", "device": args.device, "quick": args.quick,
                                  "results": results})
    # The exit status reflects the thread-safe mode only: "unsafe" is expected to fail.
    on = [r for r in results if r["mode"] == "on"]
    return 0 if all(r["verdict"]["passed"] for r in on) else 1


def comparison(results):
    rows = []
    for r in results:
        v = r["verdict"]
        eff = r["efficiency"]
        rows.append([r["mode"], f"{v['crashes']}/{v['rounds']}", f"{v['completed']}/{v['expected']}",
                     v["violations"], eff[1].get("ops_per_s", 0.0), eff[8].get("ops_per_s", 0.0),
                     eff[8].get("efficiency", 0.0), "PASS" if v["passed"] else "FAIL"])
    return "## off vs on\n\n" + report.table(
        ["mode", "crashed rounds", "complete", "violations", "ops/s 1 thread", "ops/s 8 threads",
         "efficiency 8", "verdict"], rows)
