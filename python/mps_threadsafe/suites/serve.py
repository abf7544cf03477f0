"""serve-bench: one shared model served to C closed-loop clients, three ways (Note [Serving
method]): threads alone, one-thread batching, and BatchedModule with K lanes.

Note [Serving method]
What a server has: ONE model instance on the device and C client threads. Each client, in a
closed loop, sends one sample (batch 1: workloads.input_for(model, 1, seed=client), on the
device), waits for its result, and sends the next. Three setups:
- `threads`:  each client calls model(x) itself and waits for its own stream
  (device.sync_own_stream()); thread safety on, so each thread encodes on its own stream.
- `batching`: BatchedModule(model, max_batch=M, workers=1): one batch runs at a time.
- `batcher`:  BatchedModule(model, max_batch=M, workers=K): up to K batches at once, each on
  its own stream lane.
Each (model, setup, clients) cell runs in its own process (`_serve_round SPEC_JSON`: a fork()
of a warm interpreter on mps_sim and cpu, Note [Forked rounds] in forks.py; a fresh
interpreter on mps, rounds.py): a crash is counted, never retried. In a cell every client
first makes WARMUP_CALLS calls (the batching setups through a warm-up BatchedModule of the same
configuration, closed before the measured one is made, so the measured one's stats() count the
measured calls only); then all meet at a barrier, the last one there starts the clock, and
each client calls until `seconds` have passed (at least once: every client has a result to
check). Definitions:
- samples/s = samples completed / (the last client's end - the barrier);
- latency = one call as its client sees it, the wait for the result included (p50, p99 over
  every call of every client);
- correct: each client's first and last results are compared with the CPU master model's
  output for its input; a max abs diff >= 1e-3 is a wrong result, and fails the cell, as any
  error, crash or hang does;
- mean batch size, max lanes busy, queue wait p99: BatchedModule.stats() of the measured
  batcher (docs/stats.md).

Note [Repeated, interleaved cells]
One cell per setup compares runs made seconds apart, and a machine's speed drifts by more than
the few percent the goal turns on (two runs of one cell differed by 10-20% on the 16-core
machine). With `--repeats R`, each (model, clients) runs R rounds back to back, each round the
three setups in a rotated order (round r starts with setup r mod 3; R a multiple of 3 gives
each setup each place equally often). A round's ratios (batcher / the better other samples/s;
at 1 client, batcher p99 / threads p99) compare cells run within seconds of each other; the
verdict's ratios are the medians of the rounds' ratios, and the table shows their range. A
setup's samples/s, p50 and p99 in the table are each the median over its rounds (for even R
the mean of the middle two, so the three need not come from one round, and the median of
ratios need not equal the ratio of the medians shown); its batch stats are those of its
lower-middle round by samples/s. A setup passes only if every round did; a failed round
leaves its cell without a measurement.
"""

import json
import os
import statistics
import sys
import threading
import time

from . import forks, report, rounds
from .models import SERVE_MODELS

SETUPS = ("threads", "batching", "batcher")
SETUP_LABELS = {"threads": "threads alone", "batching": "one-thread batching",
                "batcher": "BatchedModule"}
CLIENTS = (1, 2, 4, 8, 16, 32, 64)
QUICK_CLIENTS = (1, 2, 4)
DEFAULT_MODELS = SERVE_MODELS
WARMUP_CALLS = 3
TOLERANCE = 1e-3
THROUGHPUT_RATIO_REQUIRED = 1.0  # batcher / best of the other two, at every client count
P99_FACTOR_ALLOWED = 2.0         # batcher p99 at 1 client / threads-alone p99 at 1 client
ENTRY = "_serve_round"


def seconds_for(args):
    return args.seconds if args.seconds is not None else (0.5 if args.quick else 3.0)


def round_order(r):
    """The setups in round r's order (Note [Repeated, interleaved cells])."""
    k = r % len(SETUPS)
    return SETUPS[k:] + SETUPS[:k]


def clients_for(args):
    # 1 is always run: the latency check's base.
    return sorted(set(args.clients or (QUICK_CLIENTS if args.quick else CLIENTS)) | {1})


def cell_timeout(seconds, clients):
    """The most a cell's process may take: start-up (a fresh interpreter's on mps), the CPU
    references, the warm-up and the measured seconds, with room for a loaded machine; past it
    the cell is a hang."""
    return 300 + 3 * seconds + 2 * clients


# ---- The parent ----------------------------------------------------------------------------


def main(args, run_round=None):
    """The whole run; `run_round` (tests) replaces how a cell's process is run."""
    if run_round is None:
        with forks.rounds_runner(args.device) as runner:
            return _main(args, runner.run_round)
    return _main(args, run_round)


def _main(args, run_round):
    meta = report.run_metadata(args)
    seconds = seconds_for(args)
    clients = clients_for(args)
    models = args.models or list(DEFAULT_MODELS)
    repeats = getattr(args, "repeats", 1)
    settings = {"seconds": seconds, "clients": clients, "models": models,
                "workers": args.workers, "adaptive": getattr(args, "adaptive", False),
                "max_batch": args.max_batch,
                "max_wait_ms": args.max_wait_ms, "warmup_calls": WARMUP_CALLS,
                "repeats": repeats}
    specs = [(model, n, r, setup) for model in models for n in clients for r in range(repeats)
             for setup in round_order(r)]
    progress = report.Progress("serve-bench", len(specs))
    runs = []  # every cell of every round
    for model, n, r, setup in specs:
        spec = {"device": args.device, "model": model, "setup": setup, "clients": n,
                "seconds": seconds, "quick": args.quick, "max_batch": args.max_batch,
                "workers": 1 if setup == "batching" else args.workers,
                "max_wait_ms": args.max_wait_ms, "warmup": WARMUP_CALLS,
                "adaptive": setup == "batcher" and getattr(args, "adaptive", False)}
        cell = run_round(spec, cell_timeout(seconds, n), entry=ENTRY)
        cell.update(model=model, setup=setup, clients=n, round=r)
        classify(cell)
        runs.append(cell)
        rate = report.measured(cell, "samples_per_s")
        progress.step(f"{model} {setup} x{n}" + (f" round {r + 1}" if repeats > 1 else "")
                      + f": {cell['status']}" + (f" {rate:.0f} samples/s" if rate else ""))
    cells = [summarize([c for c in runs if (c["model"], c["clients"], c["setup"]) == key])
             for key in dict.fromkeys((c["model"], c["clients"], c["setup"]) for c in runs)]

    print(f"## serve-bench: {report.title_suffix(meta)} ({seconds:g} s per cell, one shared "
          f"model instance; BatchedModule max_batch={args.max_batch}, "
          f"max_wait_ms={args.max_wait_ms:g}; batcher workers={args.workers}"
          + (" (adaptive)" if getattr(args, "adaptive", False) else "") + ", one-thread "
          f"batching workers=1"
          + (f"; {repeats} interleaved rounds per cell: medians shown, each ratio the median "
             f"of its rounds' own ratios" if repeats > 1 else "")
          + ")")
    by_model = {}
    for model in models:
        mine = [c for c in runs if c["model"] == model]
        by_model[model] = model_verdict(mine, clients)
        print_model(model, [c for c in cells if c["model"] == model], mine, clients,
                    by_model[model])

    failed = [c for c in runs if not c["passed"]]
    goal = all(v["passed"] for v in by_model.values())
    verdict = {"passed": not failed and (goal or not args.require_goal),
               "cells": len(runs), "cells_failed": len(failed),
               "failed_cells": [f"{c['model']} {c['setup']} x{c['clients']}"
                                + (f" round {c['round'] + 1}" if repeats > 1 else "")
                                + f": {c['status']}" for c in failed],
               "goal_passed": goal, "goal_required": bool(args.require_goal),
               "by_model": by_model}
    print(f"\n**cells**: {len(runs) - len(failed)} of {len(runs)} ran ok and correct"
          + (": failed " + "; ".join(verdict["failed_cells"]) if failed else ""))
    print("**goal** (both checks, every model): " + ("met" if goal else "NOT met")
          + ("" if args.require_goal else " (reported, not required: --require-goal requires it)"))
    report.write_json(args.json, {"suite": "serve-bench", **meta, **settings,
                                  "setups": list(SETUPS), "verdict": verdict, "results": runs,
                                  "summary": cells})
    if args.plot:
        from . import plot
        plot.plot_serve(args.plot, cells, meta, settings)
    return 0 if verdict["passed"] else 1


def classify(cell):
    """Adds `status` (ok, crash, hang, error, errors, wrong, no samples, violations) and
    `passed` (ran to the end, no error, every checked result correct)."""
    if cell["outcome"] != "ok":
        status = cell["outcome"]
    elif cell.get("error_count"):
        status = "errors"
    elif cell.get("wrong"):
        status = "wrong"
    elif not cell.get("checked") or not cell.get("completed"):
        status = "no samples"
    elif cell.get("violations"):
        status = "violations"
    else:
        status = "ok"
    cell["status"] = status
    cell["passed"] = status == "ok"
    return cell


def summarize(rounds_of_one):
    """The (model, setup, clients) cell over its rounds (Note [Repeated, interleaved cells]):
    medians of samples/s, p50 and p99; errors and wrong results summed; the status of its
    first failed round, if any (then no measurement). One round: that round's values."""
    failed = [c for c in rounds_of_one if not c["passed"]]
    if failed:
        cell = dict(failed[0])
        if len(rounds_of_one) > 1:
            for key in ("samples_per_s", "p50_ms", "p99_ms"):
                cell[key] = None
    else:
        by_rate = sorted(rounds_of_one, key=lambda c: c["samples_per_s"])
        cell = dict(by_rate[(len(by_rate) - 1) // 2])  # its batch stats: the median round's
        for key in ("samples_per_s", "p50_ms", "p99_ms"):
            cell[key] = statistics.median(c[key] for c in rounds_of_one)
    for key in ("completed", "checked", "wrong", "error_count"):
        cell[key] = sum(c.get(key) or 0 for c in rounds_of_one)
    diffs = [c["max_abs_diff"] for c in rounds_of_one if c.get("max_abs_diff") is not None]
    cell["max_abs_diff"] = max(diffs) if diffs else None
    cell["rounds"] = len(rounds_of_one)
    cell["rounds_failed"] = len(failed)
    cell["samples_per_s_by_round"] = [report.measured(c, "samples_per_s")
                                      for c in sorted(rounds_of_one, key=lambda c: c["round"])]
    cell.pop("round", None)
    return cell


def _find(cells, setup, n, r=None):
    return next((c for c in cells if c["setup"] == setup and c["clients"] == n
                 and (r is None or c.get("round", 0) == r)), {})


def _rounds(cells, n):
    return sorted({c.get("round", 0) for c in cells if c["clients"] == n})


def _round_ratio(cells, n, r):
    """batcher / the better of the other two in round r, or None if one of them failed."""
    batcher = _rate(_find(cells, "batcher", n, r))
    others = [_rate(_find(cells, s, n, r)) for s in ("threads", "batching")]
    return batcher / max(others) if batcher and all(others) else None


def _round_p99_factor(cells, r):
    """batcher p99 / threads p99 at 1 client in round r, or None if one of them failed."""
    b, t = _find(cells, "batcher", 1, r), _find(cells, "threads", 1, r)
    b99 = report.measured(b, "p99_ms") if b.get("passed") else None
    t99 = report.measured(t, "p99_ms") if t.get("passed") else None
    return b99 / t99 if b99 is not None and t99 else None


def _rate(cell):
    return report.measured(cell, "samples_per_s") if cell.get("passed") else None


def model_verdict(cells, clients):
    """The two goal checks for one model (the JSON's verdict.by_model[model]) from its cells of
    every round: a ratio is the median of its rounds' ratios, None if any round failed."""
    ratios, by_round = {}, {}
    for n in clients:
        each = [_round_ratio(cells, n, r) for r in _rounds(cells, n)]
        by_round[str(n)] = each
        ratios[str(n)] = (statistics.median(each) if each and None not in each else None)
    throughput = {"passed": all(r is not None and r >= THROUGHPUT_RATIO_REQUIRED
                                for r in ratios.values()),
                  "ratios": ratios, "ratios_by_round": by_round,
                  "required": THROUGHPUT_RATIO_REQUIRED}

    def p99(setup):  # the median over rounds, shown beside the factor; None if a round failed
        mine = [c for c in cells if c["setup"] == setup and c["clients"] == 1]
        values = [report.measured(c, "p99_ms") if c.get("passed") else None for c in mine]
        return statistics.median(values) if values and None not in values else None

    b99, t99 = p99("batcher"), p99("threads")
    factors = [_round_p99_factor(cells, r) for r in _rounds(cells, 1)]
    factor = statistics.median(factors) if factors and None not in factors else None
    latency = {"passed": factor is not None and factor <= P99_FACTOR_ALLOWED,
               "batcher_p99_ms": b99, "threads_p99_ms": t99, "factor": factor,
               "factors_by_round": factors,
               "allowed": P99_FACTOR_ALLOWED}
    return {"passed": throughput["passed"] and latency["passed"],
            "throughput_vs_best_other": throughput, "p99_at_1_client": latency}


def _pair(cell):
    p50, p99 = report.measured(cell, "p50_ms"), report.measured(cell, "p99_ms")
    if not cell.get("passed") and p50 is None:
        return report.MISSING
    return f"{report.cell(p50)} / {report.cell(p99)}"


def _ratio_text(ratio, each):
    """The median ratio, and the range of the rounds' ratios when there are several."""
    if len(each) < 2 or ratio is None:
        return ratio
    return f"{report.cell(ratio)} ({report.cell(min(each))}-{report.cell(max(each))})"


def print_model(model, cells, runs, clients, verdict):
    """`cells`: one per (setup, clients), over its rounds; `runs`: every round's cells."""
    print(f"\n### {model}\n")
    throughput = verdict["throughput_vs_best_other"]
    rows = []
    for n in clients:
        row = [n]
        row += [_rate(_find(cells, s, n)) for s in SETUPS]
        row.append(_ratio_text(throughput["ratios"][str(n)],
                               throughput.get("ratios_by_round", {}).get(str(n), [])))
        row += [_pair(_find(cells, s, n)) for s in SETUPS]
        bad = [f"{s} {_find(cells, s, n).get('status', 'not run')}" for s in SETUPS
               if not _find(cells, s, n).get("passed")]
        row.append("; ".join(bad) if bad else "ok")
        rows.append(row)
    print(report.table(
        ["clients", "threads samples/s", "batching samples/s", "batcher samples/s",
         "batcher / best other", "threads p50 / p99 ms", "batching p50 / p99 ms",
         "batcher p50 / p99 ms", "cells"], rows))
    print()
    print(report.table(
        ["setup", "clients", "outcome", "samples/s", "p50 ms", "p99 ms", "errors", "wrong",
         "max abs diff", "mean batch", "max lanes busy", "queue wait p99 ms"],
        [[c["setup"], c["clients"], c["status"], report.measured(c, "samples_per_s"),
          report.measured(c, "p50_ms"), report.measured(c, "p99_ms"),
          report.measured(c, "error_count"), report.measured(c, "wrong"),
          report.measured(c, "max_abs_diff"),
          (c.get("batcher_stats") or {}).get("mean_batch_size"),
          (c.get("batcher_stats") or {}).get("max_lanes_busy"),
          (c.get("batcher_stats") or {}).get("queue_wait_p99_ms")]
         for n in clients for c in (_find(cells, s, n) for s in SETUPS) if c]))
    if any(c.get("round", 0) for c in runs):
        print("\nBy round (each round's setups in the order shown, run back to back):\n")
        print(report.table(
            ["clients", "round", "order", "threads samples/s", "batching samples/s",
             "batcher samples/s", "batcher / best other", "batcher p99 / threads p99"],
            [[n, r + 1, ", ".join(round_order(r))]
             + [_rate(_find(runs, s, n, r)) for s in SETUPS] + [_round_ratio(runs, n, r)]
             + [_round_p99_factor(runs, r) if n == 1 else None]
             for n in clients for r in _rounds(runs, n)]))
    for c in runs:
        if not c["passed"] and (c.get("detail") or c.get("errors")):
            why = c.get("detail") or c["errors"][0]
            where = f" round {c['round'] + 1}" if len(_rounds(runs, c["clients"])) > 1 else ""
            print(f"\n{c['setup']} x{c['clients']}{where}: {c['status']}: {why}")

    latency = verdict["p99_at_1_client"]
    ratios = ", ".join(f"{n}: {report.cell(r)}" for n, r in throughput["ratios"].items())
    print(f"\n**verdict ({model})**\n")
    print(f"- batcher >= the better of threads alone and one-thread batching at every client "
          f"count: {'PASS' if throughput['passed'] else 'FAIL'} (batcher / best other, by "
          f"clients: {ratios}; each needs >= {throughput['required']:g})")
    if latency["factor"] is None:
        detail = "not measured (a 1-client cell failed)"
    else:
        detail = (f"{report.cell(latency['batcher_p99_ms'])} ms vs "
                  f"{report.cell(latency['threads_p99_ms'])} ms = "
                  f"{report.cell(latency['factor'])}x")
    print(f"- batcher p99 at 1 client <= {latency['allowed']:g}x threads-alone p99 at 1 client: "
          f"{'PASS' if latency['passed'] else 'FAIL'} ({detail})")


# ---- The child: one cell -------------------------------------------------------------------


def child_main(spec_json):
    """`python -m mps_threadsafe _serve_round SPEC_JSON`: runs one cell, prints its result."""
    result = run_cell(json.loads(spec_json))
    sys.stdout.write(rounds.RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown: worker streams and sim threads belong to a leaked runtime
    # (Note [Runtime lifetime]); the batchers are closed already.
    os._exit(0)


def run_cell(spec):
    """One (model, setup, clients) cell in this process (Note [Serving method]); returns its
    result dict."""
    import torch

    from .. import batching
    from . import threads, workloads
    from .device import Device

    device = Device(spec["device"])
    device.set_mode("on")
    model_name, setup, n = spec["model"], spec["setup"], spec["clients"]
    seconds, warmup = spec["seconds"], spec.get("warmup", WARMUP_CALLS)
    if setup not in SETUPS:
        raise ValueError(f"unknown setup '{setup}' ({', '.join(SETUPS)})")

    master = workloads.build(model_name, quick=spec.get("quick", False))
    cpu_inputs = [workloads.input_for(model_name, 1, spec.get("quick", False), seed=c)
                  for c in range(n)]
    with torch.no_grad():
        references = [master(x) for x in cpu_inputs]
        shared = workloads.replicate(master, device.torch_device)
        inputs = [x.to(device.torch_device) for x in cpu_inputs]
    device.sync_own_stream()

    def make_batcher():
        return batching.BatchedModule(shared, max_batch=spec["max_batch"],
                                      max_wait_ms=spec["max_wait_ms"], workers=spec["workers"],
                                      device=device.torch_device,
                                      adaptive=spec.get("adaptive", False))

    def call_alone(x):
        y = shared(x)
        device.sync_own_stream()
        return y

    # The callable the clients use: the warm-up one first, the measured one after the barrier.
    current = {"call": call_alone, "batcher": None}
    if setup != "threads":
        current["batcher"] = make_batcher()
        current["call"] = current["batcher"]

    clock = {}

    def start_clock():  # run by the last client to reach the barrier, before any is released
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + seconds

    # Both barriers hold the clients and this thread, which swaps the batchers between them.
    warmed = threading.Barrier(n + 1)
    go = threading.Barrier(n + 1, action=start_clock)
    lock = threading.Lock()  # guards the result lists only, never a call
    results = {"latencies": [], "ends": [], "errors": [], "completed": 0, "checked": 0,
               "wrong": 0, "max_abs_diff": 0.0, "streams": []}

    def client(index):
        x = inputs[index]
        try:
            with torch.no_grad():
                for _ in range(warmup):
                    current["call"](x)
        except BaseException as error:  # counted; the barriers must still be reached
            with lock:
                results["errors"].append(f"warm-up: {type(error).__name__}: {error}")
            warmed.abort()
            go.abort()
            return
        try:
            warmed.wait()
            go.wait()
        except threading.BrokenBarrierError:
            return
        call, deadline = current["call"], clock["deadline"]
        latencies, first, last, error = [], None, None, None
        try:
            with torch.no_grad():
                while True:  # at least one call: every client has a result to check
                    began = time.perf_counter()
                    y = call(x)
                    latencies.append(time.perf_counter() - began)
                    if first is None:
                        first = y
                    last = y
                    if began + latencies[-1] >= deadline:
                        break
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
        end = time.perf_counter()
        diffs = []
        try:
            for y in (first, last) if first is not None else ():
                diffs.append((y.cpu() - references[index]).abs().max().item())
        except BaseException as e:
            error = error or f"check: {type(e).__name__}: {e}"
        with lock:
            results["latencies"].extend(latencies)
            results["ends"].append(end)
            results["completed"] += len(latencies)
            results["checked"] += len(diffs)
            results["wrong"] += sum(not d < TOLERANCE for d in diffs)
            results["max_abs_diff"] = max([results["max_abs_diff"], *diffs])
            if setup == "threads":
                results["streams"].append(device.stream_id())
            if error:
                results["errors"].append(error)
        if setup == "threads":
            device.release_thread_stream()

    workers = [threading.Thread(target=client, args=(i,), name=f"serve-client-{i}", daemon=True)
               for i in range(n)]
    for t in workers:
        t.start()
    try:
        warmed.wait()
        if current["batcher"] is not None:
            # A fresh batcher for the measured calls: its stats() hold them alone.
            current["batcher"].close(wait=True)
            current["batcher"] = make_batcher()
            current["call"] = current["batcher"]
        go.wait()
    except threading.BrokenBarrierError:  # a client's warm-up failed: it said why
        pass
    join_by = time.monotonic() + 120 + 5 * seconds
    for t in workers:
        t.join(max(0.0, join_by - time.monotonic()))
    hung = sum(t.is_alive() for t in workers)
    batcher_stats = None
    if current["batcher"] is not None:
        current["batcher"].close(wait=not hung)
        batcher_stats = current["batcher"].stats()
    start = clock.get("start")
    wall = (max(results["ends"]) - start) if start and results["ends"] else 0.0
    done = results["completed"]
    device_stats = device.stats()
    return {
        "model": model_name, "setup": setup, "clients": n, "seconds": seconds,
        "workers": spec["workers"] if setup != "threads" else None,
        "max_batch": spec["max_batch"] if setup != "threads" else None,
        "completed": done, "wall_s": wall,
        "samples_per_s": done / wall if wall > 0 else None,
        "p50_ms": _ms(threads.percentile(results["latencies"], 50)),
        "p99_ms": _ms(threads.percentile(results["latencies"], 99)),
        "errors": results["errors"][:10],
        "error_count": len(results["errors"]) + hung, "hung_clients": hung,
        "checked": results["checked"], "wrong": results["wrong"],
        "max_abs_diff": results["max_abs_diff"] if results["checked"] else None,
        "streams_used": sorted(set(results["streams"])),
        "batcher_stats": batcher_stats,
        "violations": device_stats.get("sim", {}).get("violations"),
        "max_active_streams": device_stats.get("max_active_streams"),
    }


def _ms(seconds):
    return None if seconds is None else seconds * 1e3
