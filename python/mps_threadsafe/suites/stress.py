"""stress: rounds of every model x thread count for a set duration, each round in its own
subprocess. A crash is a round whose process died (or hung); crash rate = crashed / total.
Never retried."""

import itertools
import time

from . import report, rounds, workloads

THREADS = (2, 4, 8)


def main(args):
    modes = args.mode or ["on"]
    duration = args.duration if args.duration else (20 if args.quick else 300)
    iterations = 3 if args.quick else 10
    configs = list(itertools.product(modes, args.models or workloads.STRESS_MODELS,
                                     args.threads or THREADS))
    deadline = time.time() + duration
    results = []
    progress = report.Progress("stress", max(len(configs), 1))
    for i, (mode, model, n) in enumerate(itertools.cycle(configs)):
        if time.time() >= deadline and i > 0:  # at least one round, then until the deadline
            break
        r = rounds.run_round({"device": args.device, "mode": mode, "model": model, "threads": n,
                              "iterations": iterations, "check": True, "quick": args.quick,
                              "seed": i}, 600)
        r.update(mode=mode, model=model, threads=n)
        results.append(r)
        if progress.done < progress.total:
            progress.step(f"{mode} {model} x{n}: {r['outcome']}")
    rows = []
    for mode in modes:
        mine = [r for r in results if r["mode"] == mode]
        crashed = sum(r["outcome"] in ("crash", "hang") for r in mine)
        failed = sum(r["outcome"] == "error" or r.get("error_count", 0) or r.get("wrong", 0) for r in mine)
        violations = sum(r.get("violations") or 0 for r in mine)
        rows.append([mode, len(mine), crashed, crashed / len(mine) if mine else 0.0, failed,
                     violations, sum(r.get("completed", 0) for r in mine)])
    print(f"## stress on {args.device} ({duration}s, {iterations} checked iterations per thread per round)\n")
    print(report.table(["mode", "rounds", "crashed", "crash rate", "rounds with errors",
                        "sim violations", "iterations complete"], rows))
    report.write_json(args.json, {"suite": "stress", "device": args.device, "quick": args.quick,
                                  "duration_s": duration, "results": results})
    on = [r for r in results if r["mode"] == "on"]
    return 1 if any(r["outcome"] != "ok" or r.get("error_count") or r.get("wrong") for r in on) else 0
