"""What `accuracy.py` reports: the results JSON's description of the call, a Markdown table per results group and
the plots (paired differences, validation curves, test top-1 per training fraction)."""

import os
import platform
import statistics
from pathlib import Path

from accuracy_protocol import final_run, rows_on
from accuracy_rows import BASELINE_ROW, ROWS
from figures import pyplot, save_figure
from paired_stats import format_interval

DPI = 120


def cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine():
    """The machine the call ran on."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def protocol_config(args, tower, text_encoder):
    """The options that shaped the results: the rows' marnet-train options, the search, seeds and data."""
    return {
        "rows": {row: ROWS[row].options for row in args.rows},
        "proxies": args.proxies,
        "grid": [list(point) for point in args.grid],
        "weight_grid": {
            row: args.weight_grid if args.weight_grid is not None else ROWS[row].weight_grid
            for row in args.rows
            if ROWS[row].uses_text
        },
        "tune_seeds": args.tune_seeds,
        "seeds": args.seeds,
        "train_fractions": args.train_fractions,
        "tune_fraction": args.tune_fraction,
        "other_proxy_rows": args.other_proxy_rows,
        "background": args.background,
        "max_train_per_class": args.max_train_per_class,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "vision_model": str(tower),
        "text_encoder": str(text_encoder),
        "launcher": args.launcher,
        "extra_train_args": args.train_args,
    }


def markdown_table(group, target_half_width=1.0):
    """One results group as a Markdown table (percent; paired difference to the baseline, by seed: its mean with
    the 95 % interval, its std, and the seeds an interval of +-`target_half_width` points would need)."""
    lines = [
        "| row | configuration | test top-1 (%) | test top-5 (%) | paired top-1 difference, 95 % interval (points) "
        f"| paired std | seeds for ±{target_half_width:g} | validation top-1 (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, values in group.items():
        paired = values.get("paired_difference_interval")
        difference = "" if row == BASELINE_ROW or paired is None else format_interval(paired, signed=True)
        std = "" if row == BASELINE_ROW or paired is None else f"{paired['std']:.2f}"
        seeds = "" if row == BASELINE_ROW else values.get("seeds_for_target") or ""
        lines.append(
            f"| {row} | {values['variant']} | {100 * values['top1_mean']:.2f} ± {100 * values['top1_std']:.2f}"
            f" | {100 * values['top5_mean']:.2f} ± {100 * values['top5_std']:.2f} | {difference} | {std} | {seeds} "
            f"| {100 * statistics.fmean(values['validation_top1']):.2f} |"
        )
    return "\n".join(lines)


def plot(results, path):
    """Bar chart per results group: mean paired top-1 difference to the baseline, error bar its std."""
    groups = list(results)
    figure, axes = _figure_row(len(groups), panel_width=4.2)
    for axis, name in zip(axes, groups):
        rows = [row for row in results[name] if row != BASELINE_ROW]
        means = [100 * results[name][row]["paired_difference_mean"] for row in rows]
        stds = [100 * results[name][row]["paired_difference_std"] for row in rows]
        axis.bar(
            rows,
            means,
            yerr=stds,
            capsize=4,
            color=["tab:green" if m > s else "tab:gray" for m, s in zip(means, stds)],
        )
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_title(name)
        axis.set_ylabel("test top-1 - baseline (points)")
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    save_figure(figure, path, DPI)


def plot_training_fractions(args, results, path):
    """Learning curves: test top-1 (mean ± std over seeds) of every row against the fraction of training images."""
    fractions = sorted(args.train_fractions)
    figure, axes = _figure_row(len(args.proxies))
    for axis, proxy in zip(axes, args.proxies):
        for row in rows_on(args, proxy):
            groups = [results[f"{proxy}@{fraction:g}"][row] for fraction in fractions]
            axis.errorbar(
                [100 * fraction for fraction in fractions],
                [100 * group["top1_mean"] for group in groups],
                yerr=[100 * group["top1_std"] for group in groups],
                marker="o",
                markersize=3,
                capsize=3,
                label=row,
            )
    _save_proxy_panels(figure, axes, args.proxies, "training images per class (%)", "test top-1 (%)", path)


def plot_curves(args, chosen, path):
    """Validation top-1 per epoch of each row's final runs at the largest training fraction, mean over seeds."""
    figure, axes = _figure_row(len(args.proxies))
    curves = {}
    for axis, proxy in zip(axes, args.proxies):
        for row in rows_on(args, proxy):
            per_seed = []
            for seed in args.seeds:
                run = final_run(chosen, row, proxy, max(args.train_fractions), seed)
                per_seed.append(
                    [record["eval_top1"] for record in run.folder(args.work_dir).history() if "eval_top1" in record]
                )
            length = min(map(len, per_seed))
            curve = [100 * statistics.fmean(seed_curve[i] for seed_curve in per_seed) for i in range(length)]
            curves[f"{proxy}/{row}"] = curve
            axis.plot(range(1, length + 1), curve, marker="o", markersize=3, label=row)
    _save_proxy_panels(figure, axes, args.proxies, "epoch", "validation top-1 (%)", path)
    return curves


def _save_proxy_panels(figure, axes, proxies, xlabel, ylabel, path):
    """Titles each panel with its proxy, labels the axes and the rows' lines, and saves the figure to `path`."""
    for axis, proxy in zip(axes, proxies):
        axis.set_title(proxy)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path, DPI)


def _figure_row(count, panel_width=5):
    """A figure of `count` panels side by side: (figure, the panels' axes)."""
    figure, axes = pyplot().subplots(1, count, figsize=(panel_width * count, 3.6), squeeze=False)
    return figure, axes[0]
