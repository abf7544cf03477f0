"""One threaded measurement, with the method fixed (Note [Threaded method]).

Note [Threaded method]
Where the old suites went wrong, and what this does instead:
- no semaphore or lock around model calls: threads call their models concurrently;
- each thread builds its own copy of the model and warms it up (first-use compilation,
  allocator growth) before a barrier; the clock starts when the last thread passes it;
- each thread waits for its own stream only, after every iteration (latency) — never a
  device-wide synchronize per op, which would make every thread wait for all the others;
- every exception is counted with its message, none is swallowed, nothing is retried;
- with `check`, every output is copied to the CPU and compared with the CPU reference.
"""

import threading
import time

import torch

from . import workloads


def percentile(values, q):
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[index]


def run_threads(device, model_name, threads, iterations, batch=None, check=False,
                distinct_inputs=False, quick=False, warmup=2, seed=0, timeout=None):
    """Runs `iterations` forwards of `model_name` on each of `threads` threads.

    Returns a dict: completed / expected iterations, errors (messages), wrong outputs, the
    largest difference from the CPU reference, wall time from the barrier, ops/s and
    samples/s, latency percentiles, the stream each thread used, and the runtime counters.
    """
    master = workloads.build(model_name, quick=quick, seed=seed)
    batch = batch or workloads.default_batch(model_name)
    inputs = [workloads.input_for(model_name, batch, quick, seed=seed + (i if distinct_inputs else 0))
              for i in range(threads)]
    references = [None] * threads
    if check:
        with torch.no_grad():
            references = [master(x) for x in inputs]

    barrier = threading.Barrier(threads)
    clock = {}
    lock = threading.Lock()  # guards the result lists only, never a model call
    results = {"completed": 0, "errors": [], "wrong": 0, "max_abs_diff": 0.0, "latencies": [],
               "streams": [], "ends": []}

    def record(**updates):
        with lock:
            for key, value in updates.items():
                if isinstance(results[key], list):
                    results[key].append(value) if not isinstance(value, list) else results[key].extend(value)
                elif key == "max_abs_diff":
                    results[key] = max(results[key], value)
                else:
                    results[key] += value

    def worker(index):
        try:
            with torch.no_grad():
                model = workloads.replicate(master, device.torch_device)
                x = inputs[index].to(device.torch_device)
                for _ in range(warmup):
                    model(x)
                device.sync_own_stream()
        except BaseException as error:  # counted; the barrier must still be reached
            record(errors=f"setup: {type(error).__name__}: {error}")
            barrier.abort()
            return
        try:
            if barrier.wait() == 0:
                device.arm_race_meetings()
                clock["start"] = time.perf_counter()
        except threading.BrokenBarrierError:
            return
        latencies = []
        try:
            with torch.no_grad():
                record(streams=device.stream_id())
                for _ in range(iterations):
                    began = time.perf_counter()
                    y = model(x)
                    if check:
                        diff = (y.cpu() - references[index]).abs().max().item()
                        record(max_abs_diff=diff)
                        if not diff < 1e-3:
                            record(wrong=1)
                            latencies.append(time.perf_counter() - began)
                            continue
                    else:
                        device.sync_own_stream()
                    latencies.append(time.perf_counter() - began)
                    record(completed=1)
        except BaseException as error:
            record(errors=f"{type(error).__name__}: {error}")
        finally:
            record(latencies=latencies, ends=time.perf_counter())
            device.release_thread_stream()

    workers = [threading.Thread(target=worker, args=(i,), name=f"suite-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout)
    hung = sum(t.is_alive() for t in workers)
    start = clock.get("start")
    wall = (max(results["ends"]) - start) if start and results["ends"] else 0.0
    stats = device.stats()
    done = results["completed"]
    return {
        "model": model_name, "threads": threads, "iterations": iterations, "batch": batch,
        "expected": threads * iterations, "completed": done, "errors": results["errors"],
        "error_count": len(results["errors"]) + hung, "wrong": results["wrong"],
        "max_abs_diff": results["max_abs_diff"] if check else None,
        "wall_s": wall, "ops_per_s": done / wall if wall > 0 else 0.0,
        "samples_per_s": done * batch / wall if wall > 0 else 0.0,
        "p50_ms": percentile(results["latencies"], 50) * 1e3,
        "p99_ms": percentile(results["latencies"], 99) * 1e3,
        "streams_used": sorted(set(results["streams"])),
        "max_active_streams": stats.get("max_active_streams"),
        "violations": stats.get("sim", {}).get("violations"),
        "contract_violations": stats.get("contract_violations"),
        "domain_waits": {d["name"]: d["waits"] for d in stats.get("domains", [])},
    }
