"""A short human view of threadsafe_stats() (every key is documented in docs/stats.md), and
`python -m mps_threadsafe stats`, which runs a small threaded workload and prints it.

    >>> import mps_threadsafe
    >>> print(mps_threadsafe.stats_summary())        # torch.mps_sim.threadsafe_stats() now
"""

import json


def _mib(n):
    """Bytes as B, KiB, MiB or GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def _ms(ns):
    return f"{ns / 1e6:,.1f} ms"


def stats_summary(stats=None):
    """A few lines saying what the runtime did, from a threadsafe_stats() dict (default: the
    current one of torch.mps_sim). Keys it does not know are ignored; missing ones print `-`."""
    if stats is None:
        import torch
        import mps_threadsafe  # noqa: F401  registers torch.mps_sim
        stats = torch.mps_sim.threadsafe_stats()
    get = stats.get
    streams = get("streams", [])
    used = [s for s in streams if s.get("dispatches")]
    protections = get("protections", {})
    off = [name for name, on in protections.items() if not on]
    domains = get("domains", [])
    busiest = max(domains, key=lambda d: d.get("waits", 0), default=None)
    sim = get("sim", {})
    alloc = get("allocator", {})

    def total(key):
        return sum(s.get(key, 0) for s in streams)

    commits = {}
    for s in streams:
        for kind, n in s.get("commits", {}).items():
            commits[kind] = commits.get(kind, 0) + n
    lines = [
        f"thread safety {'on' if get('threadsafe') else 'off'}; protections "
        + ("all on" if protections and not off else
           f"OFF: {', '.join(off)}" if off else "-"),
        f"threads: {get('threads_bound', '-')} bound to a stream, {get('threads_released', '-')} "
        f"released, {get('shared_stream_bindings', '-')} had to share one (pool exhausted)",
        f"streams: {len(streams)} created, {len(used)} used; at most "
        f"{get('max_active_streams', '-')} encoding at once "
        f"({total('overlapped_dispatches'):,} dispatches overlapped another stream's)",
        f"work: {total('ops_encoded'):,} ops in {total('command_buffers_submitted'):,} command "
        f"buffers; {total('queue_waits'):,} waits for a busy stream queue "
        f"({_ms(total('queue_wait_ns'))}); {total('cross_stream_waits'):,} cross-stream GPU waits",
        "commits: " + (", ".join(f"{kind} {n:,}" for kind, n in commits.items() if n) or "none"),
        f"serialization domains: {len(domains)}, "
        f"{sum(d.get('waits', 0) for d in domains):,} waits "
        f"({_ms(sum(d.get('wait_ns', 0) for d in domains))})"
        + (f"; most contended: {busiest['name']} ({busiest.get('waits', 0):,} waits)"
           if busiest and busiest.get("waits") else ""),
    ]
    if alloc:
        lines.append(f"allocator: {_mib(alloc.get('allocated_bytes', 0))} in use, "
                     f"{_mib(alloc.get('cached_bytes', 0))} cached, "
                     f"{alloc.get('pending_frees', '-')} frees waiting for other streams, "
                     f"{alloc.get('reuses', 0):,} reuses / "
                     f"{alloc.get('host_allocations', 0):,} new allocations")
    if sim:
        lines.append(f"sim GPU: {sim.get('kernels_executed', 0):,} kernels run, "
                     f"{sim.get('kernels_failed', 0):,} failed, at most "
                     f"{sim.get('max_concurrent_queues', '-')} queues at once, "
                     f"{sim.get('violations', '-')} Metal rule violations")
    problems = {"contract violations": get("contract_violations", 0),
                "GPU errors": total("gpu_errors"),
                "sim violations": sim.get("violations", 0)}
    bad = {name: n for name, n in problems.items() if n}
    lines.append("problems: " + (", ".join(f"{n} {name}" for name, n in bad.items())
                                 if bad else "none"))
    return "\n".join(lines)


def main(args):
    """`python -m mps_threadsafe stats`: MODEL from N threads on mps_sim, then the summary."""
    from . import threads
    from .device import Device

    device = Device("mps_sim")
    device.set_mode("on")
    result = threads.run_threads(device, args.model, args.threads, args.iterations, check=True,
                                 quick=True)
    stats = device.stats()
    print(f"{args.model} x {args.threads} threads x {args.iterations} iterations on mps_sim: "
          f"{result['completed']}/{result['expected']} complete, {result['error_count']} errors, "
          f"{result['wrong']} wrong\n")
    print(stats_summary(stats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2)
            f.write("\n")
        print(f"\nraw threadsafe_stats() written to {args.json} (keys: docs/stats.md)")
    return 0 if result["completed"] == result["expected"] and not result["error_count"] else 1
