"""python -m mps_threadsafe {story,bench,stress,stats,serve-bench} [options]; each has its own
--help.

Note [Validate before work]
Every argument is checked while parsing, before a model is built or a round started: a run
of bench or stress takes minutes to hours, and a typo must not cost them (nor end in a
traceback after the last round). A bad argument is one line on stderr and exit status 2, as
argparse does for its own errors, without the usage block; outputs (--json, --plot) are
checked writable, and --plot checks that matplotlib imports.
"""

import argparse
import os
import sys

PROG = "python -m mps_threadsafe"
DEVICES = ("mps_sim", "mps", "cpu")
# `stats` is a short look at the counters, not a load test (that is `stress`): its sizes are
# bounded so a typo (--threads 100000) cannot start a run that never ends or exhausts memory.
STATS_MAX_THREADS = 256
STATS_THREADS_WHY = "stats runs a short workload; the pool has 32 streams; use stress for load"
STATS_MAX_ITERATIONS = 100_000
STATS_ITERATIONS_WHY = "stats runs a short workload; use stress for long runs"
# serve-bench: each client is a thread, each lane a worker thread and a stream; the bounds keep
# a typo (--clients 100000) from starting threads by the hundred thousand.
SERVE_MAX_CLIENTS = 1024
SERVE_MAX_WORKERS = 256
SERVE_MAX_REPEATS = 100


class OneLineParser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


# ---- Argument types: each raises ArgumentTypeError with the reason -----------------------------


def count_list(noun, maximum=None, why=None):
    """A comma-separated list of distinct whole numbers >= 1 (thread or client counts), each at
    most `maximum` when given (`why` says where the bound comes from)."""
    def parse(text):
        values = []
        for part in text.split(","):
            part = part.strip()
            try:
                value = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"'{part}' is not a whole number (give {noun} counts like 1,2,4,8)") from None
            if value < 1:
                raise argparse.ArgumentTypeError(
                    f"{value} {noun}s: a {noun} count must be 1 or more")
            if maximum is not None and value > maximum:
                raise argparse.ArgumentTypeError(
                    f"{value:,} {noun}s: at most {maximum:,} ({why})")
            values.append(value)
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"'{text}' repeats a {noun} count")
        return tuple(values)
    return parse


positive_int_list = count_list("thread")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
    return value


def int_up_to(maximum, why):
    """A whole number from 1 to `maximum`; `why` says where the bound comes from."""
    def parse(text):
        value = positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{value:,}: at most {maximum:,} ({why})")
        return value
    return parse


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} s: the duration must be more than 0 seconds")
    return value


def milliseconds(text):
    """A wait in milliseconds: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of milliseconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} ms: give a number of milliseconds >= 0")
    return value


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: give a fraction in (0, 1], e.g. 0.5")
    return value


def model_list(valid):
    def parse(text):
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in valid]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown model {', '.join(repr(n) for n in unknown) or repr(text)}; "
                f"valid models: {', '.join(valid)}")
        return names
    return parse


def writable_file(text):
    """A path whose file can be written: its folder exists and is writable, and it is not a
    folder itself. Checked now, not after the run."""
    path = os.path.abspath(text)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: the file is not writable")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} is not writable")
    return text


def plot_file(text):
    from .suites import plot
    reason = plot.require_matplotlib()
    if reason:
        raise argparse.ArgumentTypeError(reason)
    return writable_file(text)


# ---- The parser ----------------------------------------------------------------------------------


def build_parser():
    # Model names only: importing workloads would import torch (seconds) for --help.
    from .suites.models import ALL_MODELS, BENCH_MODELS, SERVE_MODELS, STRESS_MODELS

    parser = OneLineParser(
        prog=PROG, description="Thread-safety suites for MPS / mps_sim, and the runtime's "
                               "counters. Each command has its own --help.")
    commands = parser.add_subparsers(dest="suite", metavar="COMMAND", required=True,
                                     parser_class=OneLineParser)

    def common(sub, modes_default):
        sub.set_defaults(command_parser=sub)  # for errors found after parsing
        sub.add_argument("--device", choices=DEVICES, default=None,
                         help="default: mps when available, else mps_sim")
        sub.add_argument("--mode", action="append", choices=["on", "off", "lock", "unsafe"],
                         help="repeatable. on: set_threadsafe(True); off: set_threadsafe(False), "
                              "every thread on the shared stream; lock: off plus one global "
                              "Python lock held around each model call and its result (what "
                              "users do today); unsafe: off plus, on mps_sim, the runtime's "
                              "protections off (upstream's behaviour). "
                              f"Default: {modes_default}")
        sub.add_argument("--quick", action="store_true", help="small sizes (CI)")
        sub.add_argument("--json", metavar="PATH", type=writable_file,
                         help="write the results, the machine and a machine-readable verdict")

    story = commands.add_parser(
        "story", help="can a model run from many threads, safely and faster? (pass/fail)",
        description="The story block (2 transformer encoder layers, ff 1024, B=4) from 8 "
                    "threads: thread safety (every output checked against the CPU), "
                    "efficiency at 1/2/4/8 threads, batching vs threading, correctness. "
                    "Exit status 0 when every check of mode 'on' passes.")
    common(story, "unsafe then on")
    story.add_argument("--min-efficiency", type=fraction, default=0.5, metavar="F",
                       help="efficiency at 8 threads needed to pass (default 0.5); efficiency "
                            "= speedup / ideal, ideal = min(8, cores) on mps_sim and cpu, 8 on "
                            "mps")

    bench = commands.add_parser(
        "bench", help="throughput and latency per model, thread count and mode",
        description="Each model at each thread count, each in its own subprocess: ops/s, "
                    "speedup, efficiency and p50/p99 latency.")
    common(bench, "on and off")
    bench.add_argument("--models", type=model_list(ALL_MODELS), metavar="M[,M...]",
                       help=f"default: {','.join(BENCH_MODELS)}; any of: {', '.join(ALL_MODELS)}")
    bench.add_argument("--threads", type=positive_int_list, metavar="N[,N...]",
                       help="thread counts (default 1,2,4,8; 1 is always run: the base of speedup)")
    bench.add_argument("--shared-model", action="store_true",
                       help="all threads call ONE model instance (what a server does) instead of "
                            "a copy each")
    bench.add_argument("--plot", metavar="PATH", type=plot_file,
                       help="PNG of ops/s (log) and efficiency against threads (needs matplotlib)")

    stress = commands.add_parser(
        "stress", help="rounds of every configuration for a duration; counts crashes",
        description="Rounds of every mode x model x thread count, each in a subprocess, every "
                    "output checked; each configuration at least once, then again until the "
                    "duration has passed. Crashes are counted, never retried.")
    common(stress, "on")
    stress.add_argument("--models", type=model_list(ALL_MODELS), metavar="M[,M...]",
                        help=f"default: {','.join(STRESS_MODELS)}; any of: {', '.join(ALL_MODELS)}")
    stress.add_argument("--threads", type=positive_int_list, metavar="N[,N...]",
                        help="thread counts (default 2,4,8)")
    stress.add_argument("--duration", type=positive_seconds, metavar="SECONDS",
                        help="seconds (default 300, --quick 20); every configuration runs at "
                             "least once however short")

    serve = commands.add_parser(
        "serve-bench", help="serving: BatchedModule vs threads alone vs one-thread batching",
        description="One shared model instance, C closed-loop clients each sending one sample "
                    "(batch 1) and waiting for its result, three ways: threads alone (each "
                    "client calls the model on its own stream), one-thread batching "
                    "(BatchedModule, workers=1) and the batcher (BatchedModule, --workers "
                    "lanes). Each (model, setup, clients) cell in its own subprocess: samples/s, "
                    "p50/p99 latency, errors, batch stats; each client's first and last result "
                    "checked against the CPU. Exit status 0 when every cell ran ok and correct "
                    "(the goal checks are reported; --require-goal requires them).")
    serve.set_defaults(command_parser=serve)
    serve.add_argument("--device", choices=DEVICES, default=None,
                       help="default: mps when available, else mps_sim (thread safety on)")
    serve.add_argument("--quick", action="store_true",
                       help="small sizes (CI): 0.5 s per cell, clients 1,2,4")
    serve.add_argument("--models", type=model_list(ALL_MODELS), metavar="M[,M...]",
                       help=f"default: {','.join(SERVE_MODELS)}; any of: {', '.join(ALL_MODELS)}")
    serve.add_argument("--clients", type=count_list("client", SERVE_MAX_CLIENTS,
                                                    "each client is a thread"),
                       metavar="C[,C...]",
                       help="client counts (default 1,2,4,8,16,32,64; --quick 1,2,4; 1 is always "
                            f"run: the latency check's base; at most {SERVE_MAX_CLIENTS})")
    serve.add_argument("--seconds", type=positive_seconds, metavar="S",
                       help="measured seconds per cell, after the warm-up (default 3, --quick 0.5)")
    serve.add_argument("--workers", type=int_up_to(SERVE_MAX_WORKERS,
                                                   "each lane is a worker thread and a stream"),
                       default=8, metavar="K",
                       help="the batcher's lanes, BatchedModule(workers=K) (default 8: better "
                            "than 16 on 16 cores from 16 clients up, docs/benchmarks.md)")
    serve.add_argument("--adaptive", action="store_true",
                       help="the batcher setup uses BatchedModule(adaptive=True): as many of its "
                            "--workers lanes as give the most samples/s (Note [How many lanes])")
    serve.add_argument("--repeats", type=int_up_to(SERVE_MAX_REPEATS, "each round runs "
                                                   "a process per setup"),
                       default=1, metavar="R",
                       help="rounds per (model, clients), each the three setups back to back in "
                            "a rotated order; medians shown, the goal ratio is the median of "
                            "the rounds' ratios (default 1; a multiple of 3 puts each setup in each "
                            "place equally often; Note [Repeated, interleaved cells])")
    serve.add_argument("--max-batch", type=positive_int, default=8, metavar="M",
                       help="BatchedModule(max_batch=M) of both batching setups (default 8)")
    serve.add_argument("--max-wait-ms", type=milliseconds, default=1.0, metavar="MS",
                       help="BatchedModule(max_wait_ms=MS) of both batching setups (default 1, "
                            "BatchedModule's own)")
    serve.add_argument("--require-goal", action="store_true",
                       help="exit status 1 unless both goal checks pass for every model (batcher "
                            ">= the better of the other two at every client count; its p99 at 1 "
                            "client <= 2x threads alone's)")
    serve.add_argument("--json", metavar="PATH", type=writable_file,
                       help="write the metadata, every cell and the verdict")
    serve.add_argument("--plot", metavar="PATH", type=plot_file,
                       help="PNG of samples/s and p99 latency against clients, a panel per model "
                            "(needs matplotlib)")

    stats = commands.add_parser(
        "stats", help="run a short threaded workload on mps_sim and summarize the counters",
        description="Runs MODEL from N threads on mps_sim (thread safety on) and prints "
                    "threadsafe_stats() as a short summary (docs/stats.md explains every key).")
    stats.add_argument("--model", choices=ALL_MODELS, default="linear",
                       help="the model (default linear)")
    stats.set_defaults(command_parser=stats)
    stats.add_argument("--threads", type=int_up_to(STATS_MAX_THREADS, STATS_THREADS_WHY),
                       default=4, metavar="N",
                       help=f"threads (default 4, at most {STATS_MAX_THREADS})")
    stats.add_argument("--iterations", type=int_up_to(STATS_MAX_ITERATIONS, STATS_ITERATIONS_WHY),
                       default=10, metavar="K",
                       help=f"iterations per thread (default 10, at most {STATS_MAX_ITERATIONS:,})")
    stats.add_argument("--json", metavar="PATH", type=writable_file,
                       help="also write the raw threadsafe_stats() dict")
    return parser


def default_device():
    import torch
    return "mps" if torch.backends.mps.is_available() else "mps_sim"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_round"]:
        from .suites import rounds
        return rounds.child_main(argv[1])
    if argv[:1] == ["_serve_round"]:
        from .suites import serve
        return serve.child_main(argv[1])
    if argv[:1] == ["_fork_server"]:
        from .suites import forks
        return forks.server_main(argv[1])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Said by the command's own parser, so the message names the command whose --help lists
        # what it takes (parse_args would report it as the top-level program's error).
        getattr(args, "command_parser", parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.suite == "stats":
        from .suites import stats
        return stats.main(args)
    args.device = args.device or default_device()
    if args.device == "mps":
        import torch
        if not torch.backends.mps.is_available():
            args.command_parser.error("device 'mps' is not available here (it needs macOS on Apple "
                            "silicon); use --device mps_sim")
    if args.suite == "story":
        from .suites import story as suite
    elif args.suite == "bench":
        from .suites import bench as suite
    elif args.suite == "serve-bench":
        from .suites import serve as suite
    else:
        from .suites import stress as suite
    return suite.main(args)


if __name__ == "__main__":
    sys.exit(main())
