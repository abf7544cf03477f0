"""What the suites print and write: progress on stderr (tqdm), Markdown tables (tabulate),
the one definition of scaling efficiency, the run's metadata, and JSON.

Note [Efficiency]
One definition, used by every table, the plot and every verdict:

    speedup(n)    = ops/s at n threads / ops/s at 1 thread
    ideal(n)      = n on real MPS; min(n, usable cores) on mps_sim and cpu
    efficiency(n) = speedup(n) / ideal(n)

On mps_sim the "GPU" is the host CPU (each sim queue executes its kernels on one core), and
on cpu with one intra-op thread each Python thread is one core: n threads cannot run faster
than the cores allow, so the ideal is capped at the core count. A verdict such as
`--min-efficiency 0.5` compares this same number, so the column and the verdict never
disagree.

Note [Missing cells]
A cell with no measurement (a crashed or hung round, a counter the device does not have) is
printed as `-`, never as 0 or None: 0 ops/s would read as "ran and was slow".
"""

import datetime
import json
import os
import platform
import subprocess
import sys

from tabulate import tabulate

MISSING = "-"

# How each mode is named in tables and titles (Note [What "off" means] in mps_sim.py).
MODE_LABELS = {
    "on": "on",
    "off": "off (shared stream)",
    "lock": "global lock",
    "unsafe": "unsafe (no protections)",
}


def mode_label(mode):
    return MODE_LABELS.get(mode, mode)


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def ideal_speedup(device, threads, cores=None):
    """Note [Efficiency]: n on real MPS, min(n, cores) where the host CPU does the work."""
    if device == "mps":
        return float(threads)
    return float(min(threads, cores or usable_cores()))


def scaling(ops, ops_at_1, threads, device, cores=None):
    """(speedup, efficiency) of one measurement, or (None, None) when either is missing."""
    if not ops or not ops_at_1:
        return None, None
    speedup = ops / ops_at_1
    return speedup, speedup / ideal_speedup(device, threads, cores)


# ---- Tables ------------------------------------------------------------------------------------


def cell(value):
    """One table cell: `-` for missing (Note [Missing cells]); floats to 3 significant digits
    below 10 and with thousands separators above."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return MISSING
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value else "0"
    return str(value)


def table(headers, rows):
    """A Markdown (GitHub) table; every cell goes through cell()."""
    return tabulate([[cell(v) for v in row] for row in rows], headers=headers,
                    tablefmt="github", disable_numparse=True)


def measured(result, key):
    """A measurement of a round that ran to the end; None (printed `-`) for a crashed or hung
    round, whose process left no measurement."""
    if result.get("outcome") in ("crash", "hang"):
        return None
    return result.get(key)


# ---- Progress ----------------------------------------------------------------------------------


class Progress:
    """Progress on stderr: a tqdm bar on a terminal (it fits the terminal's width), one plain
    line per step otherwise (CI logs)."""

    def __init__(self, label, total):
        self.label, self.total, self.done = label, max(1, total), 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=label, file=sys.stderr, dynamic_ncols=True,
                            leave=True)

    def step(self, note=""):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
            if self.done >= self.total:
                self.bar.close()
        else:
            sys.stderr.write(f"[{self.label}] {self.done}/{self.total} {note}\n")
            sys.stderr.flush()

    def extend(self, more):
        """More steps than planned (stress cycles until its deadline)."""
        self.total += more
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()


# ---- Metadata and JSON -------------------------------------------------------------------------


def git_commit():
    """The commit of the source tree the package was built from, when it can be found: the
    MPSTS_COMMIT variable, else `git rev-parse` in the current directory (a checkout of the
    project); None otherwise."""
    if os.environ.get("MPSTS_COMMIT"):
        return os.environ["MPSTS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def run_metadata(args):
    """Where and how a suite ran: what makes two JSON files comparable."""
    import torch
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "quick": bool(args.quick),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "arch": platform.machine(),
                    "processor": platform.processor() or None, "node": platform.node()},
        "cores": usable_cores(),
        # The cpu reference runs with one intra-op thread (OMP_NUM_THREADS=1); mps_sim rounds
        # set it themselves (suites/device.py).
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "commit": git_commit(),
        "argv": sys.argv[1:],
    }


def write_json(path, data):
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        print(f"\nJSON written to {path}")


def title_suffix(meta):
    """`mps_sim, 2 cores, torch 2.13.0, quick` for titles."""
    parts = [meta["device"], f"{meta['cores']} cores", f"torch {meta['torch']}"]
    if meta["quick"]:
        parts.append("quick")
    return ", ".join(parts)
