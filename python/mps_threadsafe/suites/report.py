"""Output helpers: a progress bar on stderr, Markdown tables, JSON and the bench plot."""

import json
import sys
import time


class Progress:
    """A one-line progress bar on stderr (plain text when stderr is not a terminal)."""

    def __init__(self, label, total):
        self.label, self.total, self.done = label, max(1, total), 0
        self.started = time.time()
        self.tty = sys.stderr.isatty()

    def step(self, note=""):
        self.done += 1
        filled = int(20 * self.done / self.total)
        bar = "#" * filled + "." * (20 - filled)
        line = (f"[{self.label}] [{bar}] {self.done}/{self.total} "
                f"{time.time() - self.started:5.1f}s {note}")
        if self.tty:
            sys.stderr.write("\r" + line[:120].ljust(120))
            if self.done >= self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def table(headers, rows):
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:,.2f}"
        return str(v)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path, data):
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2, default=str)
        print(f"\nJSON written to {path}")


def plot_bench(path, rows):
    """rows: dicts with model, mode, threads, ops_per_s, efficiency."""
    if not path:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\n--plot {path}: matplotlib is not installed (pip install matplotlib); no plot")
        return
    fig, (ops_axis, eff_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({(r["model"], r["mode"]) for r in rows}):
        series = sorted((r for r in rows if (r["model"], r["mode"]) == key),
                        key=lambda r: r["threads"])
        xs = [r["threads"] for r in series]
        label = f"{key[0]} ({key[1]})"
        ops_axis.plot(xs, [r["ops_per_s"] for r in series], marker="o", label=label)
        eff_axis.plot(xs, [r["efficiency"] for r in series], marker="o", label=label)
    ops_axis.set(xlabel="threads", ylabel="ops/s", title="throughput")
    eff_axis.set(xlabel="threads", ylabel="efficiency (ops_n / ops_1 / n)", title="efficiency",
                 ylim=(0, 1.2))
    ops_axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")
