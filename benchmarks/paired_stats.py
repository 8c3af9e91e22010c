"""Paired comparisons over seeds: means with 95 % intervals, and how many seeds an interval of a given width needs.

Two rows trained on the same seed share the data order and the augmentation, so their per-seed differences are
compared, not their means. With n seeds whose differences have sample std s, the 95 % interval of the mean
difference is mean +- t(0.975, n - 1) * s / sqrt(n) (Student's t).
"""

import math
import statistics

from scipy.stats import t as student_t

CONFIDENCE = 0.95


def t_factor(count):
    """t(0.975, count - 1): the multiple of the standard error that makes a 95 % interval of a mean of `count`."""
    if count < 2:
        raise ValueError(f"A 95 % interval needs at least 2 values, got {count}.")
    return float(student_t.ppf((1 + CONFIDENCE) / 2, count - 1))


def interval(values):
    """{"mean", "std", "half_width", "n"} of `values`: the mean +- half_width is its 95 % interval (std and
    half_width are None for a single value)."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("interval() of no values.")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "std": None, "half_width": None, "n": 1}
    std = statistics.stdev(values)
    return {
        "mean": mean,
        "std": std,
        "half_width": t_factor(len(values)) * std / math.sqrt(len(values)),
        "n": len(values),
    }


def paired_differences(values, baseline_values):
    """Per-seed differences `values[seed] - baseline_values[seed]` over the seeds both have, in seed order; an
    error if the two were not run on the same seeds (a paired comparison never drops a seed)."""
    if set(values) != set(baseline_values):
        raise ValueError(
            f"Paired rows must have the same seeds: {sorted(values)} against the baseline's {sorted(baseline_values)}."
        )
    return [values[seed] - baseline_values[seed] for seed in sorted(values)]


def seeds_for_half_width(std, half_width, maximum=10_000):
    """The fewest seeds n (>= 2) whose 95 % interval, t(0.975, n - 1) * std / sqrt(n), is at most `half_width`,
    for paired differences of sample std `std` (from a pilot). None if more than `maximum` would be needed."""
    if half_width <= 0:
        raise ValueError(f"half_width must be > 0, got {half_width}.")
    for count in range(2, maximum + 1):
        if t_factor(count) * std / math.sqrt(count) <= half_width:
            return count
    return None


def format_interval(summary, digits=2, signed=False):
    """'mean ± half_width' of an `interval()`, e.g. '+0.41 ± 1.20'; the mean alone for one value."""
    sign = "+" if signed else ""
    text = f"{summary['mean']:{sign}.{digits}f}"
    return text if summary["half_width"] is None else f"{text} ± {summary['half_width']:.{digits}f}"
