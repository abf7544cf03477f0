"""One threaded measurement, with the method fixed (Note [Threaded method]).

Note [Threaded method]
Where the old suites went wrong, and what this does instead:
- no semaphore or lock around model calls: threads call their models concurrently (mode
  "lock" adds one on purpose, as the baseline of what users do today, and says so);
- each thread builds its own copy of the model and warms it up (first-use compilation,
  allocator growth) before a barrier; the clock starts when the last thread passes it;
- each thread waits for its own stream only, after every iteration (latency) — never a
  device-wide synchronize per op, which would make every thread wait for all the others;
- every exception is counted with its message, none is swallowed, nothing is retried;
- with `check`, every output is copied to the CPU and compared with the CPU reference.
"""

import statistics
import threading
import time

import torch

from . import workloads


def percentile(values, q):
    """The q-th percentile (1..99) by linear interpolation between samples (statistics'
    "inclusive" method, numpy's default); None with no samples."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# Mode "lock": the global lock users put around every model call today.
_GLOBAL_CALL_LOCK = threading.Lock()


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_threads(device, model_name, threads, iterations, batch=None, check=False,
                distinct_inputs=False, quick=False, warmup=2, seed=0, timeout=None,
                global_lock=False, shared_model=False):
    """Runs `iterations` forwards of `model_name` on each of `threads` threads.

    global_lock: hold one process-wide lock around each call and the read of its result.
    shared_model: every thread calls one model instance on the device (a server's layout)
    instead of its own copy.

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

    call_lock = _GLOBAL_CALL_LOCK if global_lock else _NoLock()
    shared = None
    if shared_model:
        with torch.no_grad():
            shared = workloads.replicate(master, device.torch_device)
        device.sync_own_stream()
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
                model = shared if shared is not None else workloads.replicate(master, device.torch_device)
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
                if threads > 1:  # one thread has no one to race: it would wait out every meeting
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
                    with call_lock:
                        y = model(x)
                        if check:
                            diff = (y.cpu() - references[index]).abs().max().item()
                        else:
                            device.sync_own_stream()
                    if check:
                        record(max_abs_diff=diff)
                        if not diff < 1e-3:
                            record(wrong=1)
                            latencies.append(time.perf_counter() - began)
                            continue
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
        "model": model_name, "threads": threads, "global_lock": global_lock,
        "shared_model": shared_model, "iterations": iterations, "batch": batch,
        "expected": threads * iterations, "completed": done, "errors": results["errors"],
        "error_count": len(results["errors"]) + hung, "wrong": results["wrong"],
        "max_abs_diff": results["max_abs_diff"] if check else None,
        "wall_s": wall, "ops_per_s": done / wall if wall > 0 else None,
        "samples_per_s": done * batch / wall if wall > 0 else None,
        "p50_ms": _ms(percentile(results["latencies"], 50)),
        "p99_ms": _ms(percentile(results["latencies"], 99)),
        "streams_used": sorted(set(results["streams"])),
        "max_active_streams": stats.get("max_active_streams"),
        "violations": stats.get("sim", {}).get("violations"),
        "contract_violations": stats.get("contract_violations"),
        "domain_waits": {d["name"]: d["waits"] for d in stats.get("domains", [])},
    }


def _ms(seconds):
    return None if seconds is None else seconds * 1e3
