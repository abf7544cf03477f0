"""bench: Linear, MLP and Transformer x 1, 2, 4, 8 threads x 50 iterations, each thread
count in its own subprocess, in each requested mode (default: "on" and "off", i.e. ours vs
set_threadsafe(False)). Reports ops/s, speedup, efficiency and p50/p99 latency."""

from . import report, rounds, workloads

THREADS = (1, 2, 4, 8)


def main(args):
    modes = args.mode or ["on", "off"]
    iterations = 10 if args.quick else 50
    models = args.models or workloads.BENCH_MODELS
    thread_counts = args.threads or THREADS
    if 1 not in thread_counts:
        thread_counts = (1, *thread_counts)  # the baseline of speedup and efficiency
    specs = [(model, mode, n) for model in models for mode in modes for n in thread_counts]
    progress = report.Progress("bench", len(specs))
    rows = []
    for model, mode, n in specs:
        r = rounds.run_round({"device": args.device, "mode": mode, "model": model, "threads": n,
                              "iterations": iterations, "quick": args.quick}, 300 if args.quick else 900)
        r.update(model=model, mode=mode, threads=n)
        rows.append(r)
        progress.step(f"{model} {mode} {n}: {r['outcome']} {r.get('ops_per_s', 0):.0f} ops/s")
    for r in rows:
        one = next(x for x in rows if (x["model"], x["mode"], x["threads"]) == (r["model"], r["mode"], 1))
        base = one.get("ops_per_s") or 0.0
        r["speedup"] = r.get("ops_per_s", 0.0) / base if base else 0.0
        r["efficiency"] = r["speedup"] / r["threads"]
    table_rows = [[r["model"], r["mode"], r["threads"], r["outcome"], r.get("ops_per_s", 0.0),
                   r["speedup"], r["efficiency"], r.get("p50_ms", 0.0), r.get("p99_ms", 0.0),
                   r.get("error_count", "-")] for r in rows]
    print(f"## bench on {args.device} ({iterations} iterations per thread)\n")
    print(report.table(["model", "mode", "threads", "outcome", "ops/s", "speedup", "efficiency",
                        "p50 ms", "p99 ms", "errors"], table_rows))
    report.write_json(args.json, {"suite": "bench", "device": args.device, "quick": args.quick,
                                  "iterations": iterations, "results": rows})
    report.plot_bench(args.plot, rows)
    failed = [r for r in rows if r["mode"] == "on" and r["outcome"] != "ok"]
    return 1 if failed else 0
