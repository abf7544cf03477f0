"""python -m mps_threadsafe {story,bench,stress} --device {mps_sim,mps,cpu} [--quick] ..."""

import argparse
import sys


def default_device():
    import torch
    return "mps" if torch.backends.mps.is_available() else "mps_sim"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_round"]:
        from .suites import rounds
        return rounds.child_main(argv[1])
    parser = argparse.ArgumentParser(prog="python -m mps_threadsafe",
                                     description="Thread-safety suites for MPS / mps_sim.")
    parser.add_argument("suite", choices=["story", "bench", "stress"])
    parser.add_argument("--device", choices=["mps_sim", "mps", "cpu"], default=None,
                        help="default: mps when available, else mps_sim")
    parser.add_argument("--mode", action="append", choices=["on", "off", "unsafe"],
                        help="repeatable. on: set_threadsafe(True); off: set_threadsafe(False); "
                             "unsafe: off plus, on mps_sim, the runtime's protections off "
                             "(upstream's behaviour). Defaults: story unsafe+on, bench on+off, "
                             "stress on")
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="PATH", help="bench: PNG of ops/s and efficiency")
    parser.add_argument("--duration", type=float, help="stress: seconds (default 300, quick 20)")
    parser.add_argument("--models", type=lambda v: v.split(","),
                        help="bench/stress: comma-separated subset of the suite's models")
    parser.add_argument("--threads", type=lambda v: tuple(int(n) for n in v.split(",")),
                        help="bench/stress: comma-separated thread counts")
    parser.add_argument("--min-efficiency", type=float, default=0.5,
                        help="story: efficiency at 8 threads needed to pass (default 0.5)")
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    if args.device == "mps":
        import torch
        if not torch.backends.mps.is_available():
            parser.error("device 'mps' is not available here (it needs macOS on Apple silicon); "
                         "use --device mps_sim")
    if args.suite == "story":
        from .suites import story as suite
    elif args.suite == "bench":
        from .suites import bench as suite
    else:
        from .suites import stress as suite
    return suite.main(args)


if __name__ == "__main__":
    sys.exit(main())
