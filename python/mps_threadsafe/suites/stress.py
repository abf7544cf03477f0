"""stress: rounds of every mode x model x thread count, each round in its own subprocess. A
crash is a round whose process died (or hung); crash rate = crashed / total. Never retried.

Every configuration runs at least once, whatever --duration says (--quick makes each round
smaller, it never skips one); the remaining time cycles through them again, in order, until
the duration has passed.
"""

import itertools
import time

from . import report, rounds, workloads

THREADS = (2, 4, 8)
DEFAULT_MODES = ("on",)


def durations(quick):
    return 20.0 if quick else 300.0


def main(args):
    meta = report.run_metadata(args)
    modes = args.mode or list(DEFAULT_MODES)
    models = args.models or list(workloads.STRESS_MODELS)
    thread_counts = sorted(set(args.threads or THREADS))
    duration = args.duration if args.duration is not None else durations(args.quick)
    iterations = 3 if args.quick else 10
    configs = list(itertools.product(modes, models, thread_counts))
    started = time.time()
    deadline = started + duration
    results = []
    progress = report.Progress("stress", len(configs))
    for i, (mode, model, n) in enumerate(itertools.cycle(configs)):
        if i >= len(configs) and time.time() >= deadline:
            break
        if i >= progress.total:
            progress.extend(len(configs))
        r = rounds.run_round({"device": args.device, "mode": mode, "model": model, "threads": n,
                              "iterations": iterations, "check": True, "quick": args.quick,
                              "seed": i}, 600)
        r.update(mode=mode, model=model, threads=n)
        results.append(r)
        progress.step(f"{mode} {model} x{n}: {r['outcome']}")
    elapsed = time.time() - started

    summary = [summarize_mode(mode, [r for r in results if r["mode"] == mode]) for mode in modes]
    print(f"## stress: {report.title_suffix(meta)}\n")
    print(f"{len(results)} rounds in {elapsed:.0f} s (duration {duration:g} s): all "
          f"{len(configs)} configurations ({len(modes)} modes x {len(models)} models x "
          f"{len(thread_counts)} thread counts) at least once, {iterations} checked "
          f"iterations per thread per round\n")
    print(report.table(
        ["mode", "rounds", "crashed", "crash rate", "rounds with errors", "sim violations",
         "iterations complete"],
        [[report.mode_label(s["mode"]), s["rounds"], s["crashed"], s["crash_rate"],
          s["rounds_with_errors"], s["sim_violations"], s["iterations_complete"]]
         for s in summary]))
    crashed = sum(s["crashed"] for s in summary)
    if crashed:
        print(f"\nsim violations are counted in rounds that finished: a crashed round's "
              f"process died at its first violation ({crashed} rounds), as Metal kills it")
    on = [s for s in summary if s["mode"] == "on"]
    verdict = {"passed": all(s["crashed"] == 0 and s["rounds_with_errors"] == 0
                             and not s["sim_violations"] for s in on),
               "by_mode": {s["mode"]: s for s in summary}}
    report.write_json(args.json, {"suite": "stress", **meta, "duration_s": duration,
                                  "elapsed_s": elapsed, "iterations": iterations,
                                  "configurations": [list(c) for c in configs],
                                  "verdict": verdict, "results": results})
    return 0 if verdict["passed"] else 1


def summarize_mode(mode, results):
    crashed = sum(r["outcome"] in ("crash", "hang") for r in results)
    with_errors = sum(1 for r in results if r["outcome"] == "error" or r.get("error_count")
                      or r.get("wrong"))
    finished = [r for r in results if r["outcome"] not in ("crash", "hang")]
    return {
        "mode": mode,
        "rounds": len(results),
        "crashed": crashed,
        "crash_rate": crashed / len(results) if results else None,
        "rounds_with_errors": with_errors,
        # None when the device reports no violation counter (cpu, mps).
        "sim_violations": (sum(r["violations"] for r in finished if r.get("violations") is not None)
                           if any(r.get("violations") is not None for r in finished) else None),
        "iterations_complete": sum(r.get("completed", 0) for r in finished),
    }
