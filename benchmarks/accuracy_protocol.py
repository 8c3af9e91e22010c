"""The protocol of `accuracy.py`: tune every row on validation, then train the chosen configurations on every seed
and training fraction and compare them with the baseline, paired by seed (steps 2 to 4 of its docstring)."""

import statistics

from accuracy_rows import BASELINE_ROW, ROWS
from accuracy_runs import Run, execute, run_for, test_metrics
from paired_stats import interval, seeds_for_half_width


def mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def rows_on(args, proxy):
    """The rows reported on `proxy`: every row on the first proxy; on the others, the rows that do not read text
    (shared) and --other-proxy-rows."""
    if proxy == args.proxies[0]:
        return list(args.rows)
    return [row for row in args.rows if not ROWS[row].uses_text or row in args.other_proxy_rows]


def key_of(row, proxy):
    """The (proxy, row) a row's configuration is chosen under: rows that do not read text share one."""
    return run_for(row, proxy, 1.0, (1.0, 1.0), (), 0).proxy, row


def tune(args, context):
    """{(proxy, row): chosen Run template (seed 0)} and the tuning table, from validation top-1 only, at
    --tune-fraction. Rows are tuned on the first proxy of --proxies; on the others, rows reading text keep the
    configuration chosen there."""
    tuned_proxy, fraction = args.proxies[0], args.tune_fraction
    keys = list(dict.fromkeys(key_of(row, tuned_proxy) for row in args.rows))
    stage1 = {
        key: list(dict.fromkeys(run_for(key[1], tuned_proxy, fraction, point, (), 0) for point in args.grid))
        for key in keys
    }  # the timm anchor's points collapse to distinct learning rates

    def scored(templates):
        runs = [t.with_seed(seed) for t in templates for seed in args.tune_seeds]
        records = execute(args, runs, context)
        return [
            (statistics.fmean(records[t.with_seed(s)]["validation_top1"] for s in args.tune_seeds), t)
            for t in templates
        ]

    first = dict(zip(stage1, _batched(scored, stage1)))
    second_templates = {}
    for key, scores in first.items():
        best = max(scores, key=lambda item: item[0])[1]
        weight_grid = args.weight_grid if args.weight_grid is not None else ROWS[key[1]].weight_grid
        if ROWS[key[1]].uses_text and weight_grid:
            second_templates[key] = [Run(best.row, best.proxy, fraction, best.point, tuple(w), 0) for w in weight_grid]
    second = dict(zip(second_templates, _batched(scored, second_templates)))
    chosen, table = {}, {}
    for key in keys:
        candidates = first[key] + second.get(key, [])
        _, best = max(candidates, key=lambda item: item[0])
        chosen[key] = best
        table[f"{key[0]}/{key[1]}"] = {
            "chosen": best.variant,
            "validation_top1": {template.variant: score for score, template in candidates},
        }
    for proxy in args.proxies[1:]:
        for row in rows_on(args, proxy):
            if ROWS[row].uses_text:
                template = chosen[(tuned_proxy, row)]
                chosen[(proxy, row)] = Run(row, proxy, fraction, template.point, template.weights, 0)
    return chosen, table


def _batched(scored, templates_by_key):
    """Scores every key's templates in one `execute` call (so runs of different rows share the parallel slots)."""
    everything = [t for templates in templates_by_key.values() for t in templates]
    scores = dict((t, s) for s, t in scored(everything))
    return [[(scores[t], t) for t in templates] for templates in templates_by_key.values()]


def final_run(chosen, row, proxy, fraction, seed):
    """The final run of `row` on `proxy` at a training fraction and seed, in the configuration chosen for it."""
    template = chosen[key_of(row, proxy)]
    return Run(row, template.proxy, fraction, template.point, template.weights, seed)


def final(args, context, chosen):
    """Final runs of the chosen configurations on every seed and training fraction; the test split is read here."""
    runs = []
    for fraction in args.train_fractions:
        for (proxy, row), template in chosen.items():
            runs += [Run(row, proxy, fraction, template.point, template.weights, seed) for seed in args.seeds]
    runs.sort(key=lambda run: run.seed)  # seed by seed: an interrupted call leaves whole seeds, every row paired
    records = execute(args, runs, context)
    results = {}
    for proxy in args.proxies:
        for fraction in args.train_fractions:
            group = {}
            for row in rows_on(args, proxy):
                row_runs = [final_run(chosen, row, proxy, fraction, seed) for seed in args.seeds]
                tests = [test_metrics(args, run) for run in row_runs]
                group[row] = {
                    "variant": row_runs[0].variant,
                    "top1": [t["top1"] for t in tests],
                    "top5": [t["top5"] for t in tests],
                    "validation_top1": [records[run]["validation_top1"] for run in row_runs],
                    "seconds_per_run_mean": statistics.fmean(records[run]["process_seconds"] for run in row_runs),
                }
            baseline = group[BASELINE_ROW]["top1"]
            for values in group.values():
                values["top1_mean"], values["top1_std"] = mean_std(values["top1"])
                values["top5_mean"], values["top5_std"] = mean_std(values["top5"])
                differences = [a - b for a, b in zip(values["top1"], baseline)]
                values["paired_difference_mean"], values["paired_difference_std"] = mean_std(differences)
                if len(differences) > 1:  # in points: the 95 % interval, and the seeds a +-target interval needs
                    paired = values["paired_difference_interval"] = interval([100 * d for d in differences])
                    values["seeds_for_target"] = seeds_for_half_width(paired["std"], args.target_half_width)
            results[f"{proxy}@{fraction:g}"] = group
    return results, [records[run] for run in dict.fromkeys(runs)]
