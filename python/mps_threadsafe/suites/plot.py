"""The bench plot (--plot PATH): throughput and efficiency against thread count.

Read at a glance: throughput on a log axis (a small model at 10k ops/s and a transformer at 50
share one chart), one hue per model with the mode as line style (on solid, off dashed, unsafe
dotted), integer thread ticks, each model's ideal scaling (ops/s at 1 thread x n) in its hue,
the core count as the ceiling of that ideal where the host CPU does the work (Note
[Efficiency] in report.py), and the device, cores, torch and --quick in the title.
"""

from . import report

MODE_STYLES = {"on": "-", "off": "--", "lock": "-.", "unsafe": ":"}


def require_matplotlib():
    """None when matplotlib can be imported, else the one-line reason (checked before a run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ("--plot needs matplotlib, which is not installed here "
                "(pip install matplotlib, or pip install 'mps_threadsafe[plot]')")
    return None


def plot_bench(path, rows, meta):
    """rows: bench result dicts (model, mode, threads, ops_per_s, efficiency)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    device, cores = meta["device"], meta["cores"]
    models = sorted({r["model"] for r in rows})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    threads = sorted({r["threads"] for r in rows})

    fig, (ops_axis, eff_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    for model in models:
        for mode, style in MODE_STYLES.items():
            series = sorted((r for r in rows if r["model"] == model and r["mode"] == mode
                             and r.get("ops_per_s")), key=lambda r: r["threads"])
            if not series:
                continue
            xs = [r["threads"] for r in series]
            label = f"{model} {report.mode_label(mode)}"
            ops_axis.plot(xs, [r["ops_per_s"] for r in series], style, marker="o",
                          color=colours[model], label=label)
            eff_axis.plot(xs, [r["efficiency"] for r in series], style, marker="o",
                          color=colours[model], label=label)
        base = next((r["ops_per_s"] for r in rows if r["model"] == model and r["threads"] == 1
                     and r["mode"] == "on" and r.get("ops_per_s")), None)
        if base:
            ops_axis.plot(threads, [base * report.ideal_speedup(device, n, cores) for n in threads],
                          color=colours[model], alpha=0.35, linewidth=4, solid_capstyle="round",
                          label=f"{model} ideal")

    for axis in (ops_axis, eff_axis):
        axis.set_xlim(min(threads) - 0.3, max(threads) + 0.3)
        axis.xaxis.set_major_locator(FixedLocator(threads))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xlabel("threads")
        axis.grid(True, which="major", alpha=0.3)
        if device != "mps" and cores < max(threads):
            axis.axvline(cores, color="0.3", linewidth=1, linestyle="-.")
    if device != "mps" and cores < max(threads):
        ops_axis.text(cores, 1.0, f" {cores} cores: ideal capped", color="0.3", fontsize=8,
                      transform=ops_axis.get_xaxis_transform(), va="top")
    ops_axis.set_yscale("log")
    ops_axis.set_ylabel("ops/s (log)")
    ops_axis.set_title("throughput (wide pale line: ideal scaling)")
    eff_axis.axhline(1.0, color="0.5", linewidth=1)
    # Room for a superlinear point (a noisy 1-thread base), but a wild one must not squash the rest.
    top = max([r["efficiency"] for r in rows if r.get("efficiency")] + [1.0])
    eff_axis.set_ylim(0, min(max(1.25, top * 1.08), 3.0))
    eff_axis.set_ylabel("efficiency = speedup / min(n, cores)" if device != "mps"
                        else "efficiency = speedup / n")
    eff_axis.set_title("efficiency (1 = ideal)")
    # One legend under both charts, a column per model: it never covers a line.
    handles, labels = ops_axis.get_legend_handles_labels()
    columns = max(1, len(models))
    order = [i for column in range(columns) for i in range(len(labels)) if
             labels[i].split(" ")[0] == models[column]]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower center",
               ncol=columns, fontsize=8, frameon=False)
    legend_rows = max(1, -(-len(labels) // columns))
    fig.suptitle(f"bench: {report.title_suffix(meta)}")
    fig.tight_layout(rect=(0, 0.045 * legend_rows + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nplot written to {path}")


SERVE_STYLES = {"threads": ("tab:blue", "s", "--"), "batching": ("tab:orange", "^", ":"),
                "batcher": ("tab:green", "o", "-")}


def plot_serve(path, cells, meta, settings):
    """serve-bench (--plot PATH): a column per model; top, samples/s against clients (log2 x);
    bottom, p99 latency (log) against clients; a line per setup. Failed cells are left out of
    the lines and marked with an x at the bottom of their panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (FixedFormatter, FixedLocator, FuncFormatter, LogLocator,
                                   NullLocator)

    from .serve import SETUP_LABELS, SETUPS

    models = list(dict.fromkeys(c["model"] for c in cells))
    clients = sorted({c["clients"] for c in cells})
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models) + 0.6, 7.6),
                             squeeze=False)
    for column, model in enumerate(models):
        rate_axis, p99_axis = axes[0][column], axes[1][column]
        for setup in SETUPS:
            colour, marker, style = SERVE_STYLES[setup]
            mine = sorted((c for c in cells if c["model"] == model and c["setup"] == setup),
                          key=lambda c: c["clients"])
            good = [c for c in mine if c.get("passed")]
            label = f"{setup}: {SETUP_LABELS[setup]}"
            if setup != "threads":
                label += f", workers={1 if setup == 'batching' else settings['workers']}"
            rate_axis.plot([c["clients"] for c in good], [c["samples_per_s"] for c in good],
                           style, marker=marker, color=colour, label=label)
            p99_axis.plot([c["clients"] for c in good], [c["p99_ms"] for c in good], style,
                          marker=marker, color=colour, label=label)
            bad = [c["clients"] for c in mine if not c.get("passed")]
            for axis in (rate_axis, p99_axis):
                if bad:
                    axis.plot(bad, [0.02] * len(bad), "x", color=colour, markersize=9,
                              transform=axis.get_xaxis_transform(), clip_on=False)
        rate_axis.set_ylim(bottom=0)
        rate_axis.set_title(f"{model}: throughput")
        rate_axis.set_ylabel("samples/s")
        p99_axis.set_yscale("log")
        p99_axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        p99_axis.yaxis.set_minor_locator(NullLocator())
        p99_axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        p99_axis.set_title(f"{model}: p99 latency per call")
        p99_axis.set_ylabel("p99 ms (log)")
        for axis in (rate_axis, p99_axis):
            axis.set_xscale("log", base=2)
            axis.set_xlim(clients[0] / 1.3, clients[-1] * 1.3)
            axis.xaxis.set_major_locator(FixedLocator(clients))
            axis.xaxis.set_major_formatter(FixedFormatter([str(n) for n in clients]))
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_xlabel("clients (closed loop, 1 sample per call)")
            axis.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = len(SETUPS) if len(models) > 1 else 1
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8.5, frameon=False)
    legend_rows = -(-len(labels) // columns)
    fig.suptitle(f"serve-bench: {report.title_suffix(meta)}\none shared model, "
                 f"{settings['seconds']:g} s per cell, max_batch={settings['max_batch']}, "
                 f"max_wait_ms={settings['max_wait_ms']:g}"
                 + (f"\nmedians of {settings['repeats']} interleaved rounds per cell"
                    if settings.get("repeats", 1) > 1 else "")
                 + ("; x: a failed cell" if any(not c.get("passed") for c in cells) else ""),
                 fontsize=10.5)
    fig.tight_layout(rect=(0, 0.025 * legend_rows + 0.015, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nplot written to {path}")
