"""bench: Linear, MLP and Transformer x 1, 2, 4, 8 threads x 50 iterations, each thread
count in its own subprocess, in each requested mode (default: "on" and "off", i.e. ours vs
set_threadsafe(False)). Reports ops/s, speedup, efficiency (Note [Efficiency] in report.py)
and p50/p99 latency."""

from . import report, rounds, workloads

THREADS = (1, 2, 4, 8)
DEFAULT_MODES = ("on", "off")


def iterations_for(quick):
    return 10 if quick else 50


def main(args):
    meta = report.run_metadata(args)
    modes = args.mode or list(DEFAULT_MODES)
    iterations = iterations_for(args.quick)
    models = args.models or list(workloads.BENCH_MODELS)
    thread_counts = sorted(set(args.threads or THREADS) | {1})  # 1: the base of speedup
    specs = [(model, mode, n) for model in models for mode in modes for n in thread_counts]
    progress = report.Progress("bench", len(specs))
    rows = []
    for model, mode, n in specs:
        r = rounds.run_round({"device": args.device, "mode": mode, "model": model, "threads": n,
                              "iterations": iterations, "quick": args.quick,
                              "shared_model": args.shared_model},
                             300 if args.quick else 900)
        r.update(model=model, mode=mode, threads=n)
        rows.append(r)
        ops = report.measured(r, "ops_per_s")
        progress.step(f"{model} {mode} x{n}: {r['outcome']}"
                      + (f" {ops:.0f} ops/s" if ops else ""))
    add_scaling(rows, args.device, meta["cores"])

    layout = "one shared model instance" if args.shared_model else "a model copy per thread"
    print(f"## bench: {report.title_suffix(meta)} ({iterations} iterations per thread, "
          f"{layout})\n")
    print(report.table(
        ["model", "mode", "threads", "outcome", "ops/s", "speedup", "ideal", "efficiency",
         "p50 ms", "p99 ms", "errors"],
        [[r["model"], report.mode_label(r["mode"]), r["threads"], r["outcome"],
          report.measured(r, "ops_per_s"), r["speedup"], r["ideal"], r["efficiency"],
          report.measured(r, "p50_ms"), report.measured(r, "p99_ms"),
          report.measured(r, "error_count")] for r in rows]))
    print(f"\nefficiency = speedup / ideal; ideal = "
          + ("n" if args.device == "mps" else f"min(n, {meta['cores']} cores)")
          + " (Note [Efficiency])")
    failed = [r for r in rows if r["mode"] == "on" and r["outcome"] != "ok"]
    verdict = {"passed": not failed,
               "on_rounds": sum(r["mode"] == "on" for r in rows),
               "on_rounds_failed": len(failed)}
    report.write_json(args.json, {"suite": "bench", **meta, "iterations": iterations,
                                  "models": models, "modes": modes, "threads": thread_counts,
                                  "shared_model": args.shared_model,
                                  "verdict": verdict, "results": rows})
    if args.plot:
        from . import plot
        plot.plot_bench(args.plot, rows, meta)
    return 0 if verdict["passed"] else 1


def add_scaling(rows, device, cores):
    """Adds speedup, ideal and efficiency (None when a measurement is missing) to each row."""
    for r in rows:
        one = next((x for x in rows if (x["model"], x["mode"], x["threads"])
                    == (r["model"], r["mode"], 1)), {})
        r["ideal"] = report.ideal_speedup(device, r["threads"], cores)
        r["speedup"], r["efficiency"] = report.scaling(
            report.measured(r, "ops_per_s"), report.measured(one, "ops_per_s"), r["threads"],
            device, cores)
