"""Every paired comparison of several results files in Markdown tables: the overview BENCHMARKS section 1 opens with.

Reads the JSON files `benchmarks/accuracy.py` and `benchmarks/robustness.py` write. A *setting* is one prepared
dataset (its path, so two work folders are two settings), one training fraction and one text proxy for
`accuracy.py`, one dataset and split for `robustness.py`. Files of the same setting are merged seed by seed: a call
with seeds 0-9 of five rows and a later one with seeds 0-19 of two rows give one table with 10 and 20 seeds. A seed
both files hold must have the same score (the same run); a different score means two different runs under one
name, and the files are refused rather than mixed.

A file named `PATH:ROW,ROW=NEW,...` gives only those rows, each renamed where it says `=NEW`. That is how files
written by different versions of `accuracy_rows.py` are merged when one row name meant two configurations (e.g.
`marnet` before and after a default changed): `summary.py new.json old.json:baseline,ingredients` leaves the old
`marnet` out, `old.json:baseline,marnet=marnet-before` keeps it under another name.

Each row is reported as its mean top-1 over its seeds and its mean paired difference to the setting's baseline with
the 95 % interval (Student's t), in points, over the seeds both have ("on N seeds" when that is fewer than the
row's own; a row sharing no seed with the baseline is an error). Corrupted top-1 is the mean over every corruption
and severity the file scored.

    python benchmarks/summary.py benchmarks/results/accuracy_dishes_*.json benchmarks/results/robustness_dishes*.json
    python benchmarks/summary.py quarter_defaults.json fractions.json:baseline,ingredients,timm
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from marnet_cli.errors import CLIError, UsageError, command  # noqa: E402
from marnet_cli.files import atomic_write_text  # noqa: E402
from marnet_cli.options import REQUIRED, MARNetArgumentParser, option  # noqa: E402
from paired_stats import format_interval, interval  # noqa: E402

PROG = "summary.py"
BASELINE_ROW = "baseline"
CLEAN, CORRUPTED = "clean", "corrupted"
SPLITS = ("test", "validation")
TOP1_KEYS = {"test": "top1", "validation": "validation_top1"}  # per split, the accuracy.py results field


@dataclass(frozen=True)
class ResultsFile:
    """A results file as named on the command line: `PATH` (every row) or `PATH:ROW,ROW=NEW,...` (those rows only,
    each renamed where it says `=NEW`)."""

    path: Path
    rows: dict[str, str] | None = None  # {row in the file: row in the tables}; None: every row, as named

    @classmethod
    def parse(cls, text):
        if Path(text).is_file() or ":" not in text:
            return cls(Path(text))
        path, selection = text.rsplit(":", 1)
        rows = {}
        for entry in selection.split(","):
            old, equals, new = entry.partition("=")
            if not old or (equals and not new) or old in rows:
                raise UsageError(
                    f"{text}: expected PATH or PATH:ROW,ROW=NEW,... (each row once, a name after each '='); "
                    f"got {entry!r}."
                )
            rows[old] = new or old
        if len(set(rows.values())) < len(rows):
            raise UsageError(f"{text}: two rows would get the same name ({', '.join(rows.values())}).")
        return cls(Path(path), rows)

    def name(self, row):
        """The row's name in the tables, or None for a row this file does not give."""
        return row if self.rows is None else self.rows.get(row)

    def check_rows(self, rows_in_file):
        missing = [row for row in self.rows or () if row not in rows_in_file]
        if missing:
            raise UsageError(f"{self.path}: no row {', '.join(missing)}; it has {', '.join(rows_in_file)}.")


@dataclass
class SummaryArguments:
    """Options of `summary.py`."""

    files: list[str] = option(
        REQUIRED,
        positional=True,
        nargs="+",
        help="results JSON of accuracy.py or robustness.py; PATH:ROW,ROW=NEW,... takes (and renames) those rows only",
    )
    baseline: str | None = option(
        help="the row every other row of a setting is paired with (default: the file's own: `baseline` for "
        "accuracy.py, the first --row for robustness.py)"
    )
    split: str = option(
        "test",
        choices=SPLITS,
        help="for accuracy.py files, the split whose top-1 is compared (validation: what configurations are chosen "
        "on); robustness.py files hold the split they were scored on",
    )
    output: Path | None = option(help="write the Markdown here (default: print it)")

    def __post_init__(self):
        self.files = [ResultsFile.parse(text) for text in self.files]
        for source in self.files:
            if not source.path.is_file():
                raise UsageError(
                    f"{source.path}: no such file; give results JSON written by accuracy.py or robustness.py."
                )


@dataclass
class Scores:
    """One row of one setting: {seed: test top-1 (%)} per metric, merged over files, and the files it came from."""

    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def add(self, metric, seed, value, path):
        known = self.per_seed.setdefault(metric, {})
        if seed in known and abs(known[seed] - value) > 1e-9:
            raise CLIError(
                f"{path}: seed {seed} scores {value:.4f} % ({metric}) where {', '.join(self.files)} gave "
                f"{known[seed]:.4f} %: two different runs under one setting and row; summarize them separately."
            )
        known[seed] = value
        if path not in self.files:
            self.files.append(path)


@dataclass
class Setting:
    """One setting of the table: what it is (`kind`: "accuracy" or "robustness", the dataset path, the rest in
    words), the row every other is paired with, and {row: Scores} in the order the files name them."""

    kind: str
    dataset: str
    details: str
    baseline: str
    rows: dict[str, Scores] = field(default_factory=dict)

    @property
    def key(self):
        return self.kind, self.dataset, self.details

    def add(self, row, metric, seed, value, path):
        self.rows.setdefault(row, Scores()).add(metric, seed, value, path)


def read_results(source, split="test"):
    """The settings of one results file (a ResultsFile: its rows as selected); `split` chooses the accuracy.py
    split."""
    path = source.path
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CLIError(f"{path}: not a readable JSON file ({error}).") from error
    if isinstance(results, dict) and {"results", "config", "dataset"} <= set(results):
        source.check_rows(list(dict.fromkeys(row for rows in results["results"].values() for row in rows)))
        return _accuracy_settings(results, source, split)
    if isinstance(results, dict) and {"summary", "dataset", "split"} <= set(results):
        source.check_rows(list(results["summary"]))
        return [_robustness_setting(results, source)]
    raise CLIError(
        f"{path}: expected the JSON of accuracy.py (keys results, config, dataset) or robustness.py (keys summary, "
        "dataset, split); got neither."
    )


def _accuracy_settings(results, source, split):
    """One setting per (proxy, training fraction) group; top-1 lists follow `config.seeds`."""
    settings = []
    for group, rows in results["results"].items():
        proxy, fraction = group.split("@")
        details = f"{100 * float(fraction):g} % of the training split, {proxy} text, {split} top-1"
        setting = Setting("accuracy", results["dataset"]["path"], details, BASELINE_ROW)
        for row, values in rows.items():
            name = source.name(row)
            if name is None:
                continue
            for seed, top1 in zip(results["config"]["seeds"], values[TOP1_KEYS[split]], strict=True):
                setting.add(name, CLEAN, seed, 100 * top1, str(source.path))
        settings.append(setting)
    return settings


def _robustness_setting(results, source):
    details = f"{results['split']} split ({results['num_images']} images)"
    baseline = source.name(results["baseline"]) or results["baseline"]
    setting = Setting("robustness", results["dataset"], details, baseline)
    for row, heads in results["summary"].items():
        name = source.name(row)
        if name is None:
            continue
        for seed, metrics in heads["logits"]["per_seed"].items():
            for metric in (CLEAN, CORRUPTED):
                setting.add(name, metric, int(seed), metrics[metric], str(source.path))
    return setting


def merge(sources, split="test"):
    """The settings of every file (ResultsFile), those of the same setting merged seed by seed."""
    merged = {}
    for source in sources:
        path = source.path
        for setting in read_results(source, split):
            into = merged.setdefault(setting.key, Setting(*setting.key, setting.baseline))
            if into.baseline != setting.baseline:
                raise CLIError(
                    f"{path}: the baseline of {setting.dataset} ({setting.details}) is {setting.baseline!r} where an "
                    f"earlier file's is {into.baseline!r}; summarize them separately."
                )
            for row, scores in setting.rows.items():
                for metric, per_seed in scores.per_seed.items():
                    for seed, value in per_seed.items():
                        into.add(row, metric, seed, value, str(path))
    return list(merged.values())


def paired(scores, baseline, metric, title, row, baseline_row):
    """The 95 % interval of row - baseline over the seeds both have (None for fewer than two); an error if they
    share none, which is never a paired comparison."""
    values, reference = scores.per_seed[metric], baseline.per_seed[metric]
    common = sorted(set(values) & set(reference))
    if not common:
        raise CLIError(
            f"{title}: row {row} (seeds {sorted(values)}) shares no seed with {baseline_row} (seeds "
            f"{sorted(reference)}); add the file with {baseline_row}'s runs on those seeds."
        )
    return interval([values[seed] - reference[seed] for seed in common]) if len(common) > 1 else None


def table(setting, title, baseline_row=None):
    """The Markdown lines of one setting: its title, then one line per row, the baseline first."""
    baseline_row = baseline_row or setting.baseline
    rows = setting.rows
    if baseline_row not in rows:
        raise CLIError(f"{title}: no {baseline_row!r} row to pair with (rows: {list(rows)}); pass --baseline.")
    metrics = [CLEAN] if setting.kind == "accuracy" else [CLEAN, CORRUPTED]
    header = ["row", "seeds"]
    for metric in metrics:
        name = "" if setting.kind == "accuracy" else f"{metric} "  # accuracy.py files hold clean images only
        header += [f"{name}top-1 (%)", f"paired {name}difference (points)", f"paired {name}std"]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in [baseline_row, *(row for row in rows if row != baseline_row)]:
        scores = rows[row]
        cells = [row, str(len(scores.per_seed[CLEAN]))]
        for metric in metrics:
            cells.append(format_interval(interval(scores.per_seed[metric].values())))
            difference = (
                None if row == baseline_row else paired(scores, rows[baseline_row], metric, title, row, baseline_row)
            )
            if difference is None:
                cells += ["", ""]
                continue
            on = "" if difference["n"] == len(scores.per_seed[metric]) else f" (on {difference['n']} seeds)"
            cells += [format_interval(difference, signed=True) + on, f"{difference['std']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def summary_markdown(sources, baseline_row=None, split="test"):
    """The Markdown of every setting of `sources` (ResultsFile), in the order the files name them. A setting is
    titled by its dataset folder's name, or its whole path where two settings' folders share a name."""
    settings = merge(sources, split)
    names = [Path(dataset).name for dataset in {setting.dataset for setting in settings}]
    lines = ["Mean over seeds ± its 95 % interval (Student's t); paired differences in points.", ""]
    for setting in settings:
        name = Path(setting.dataset).name
        title = f"{name if names.count(name) == 1 else setting.dataset}, {setting.details}"
        lines += table(setting, title, baseline_row)
    return "\n".join(lines)


@command(PROG)
def main(argv=None):
    args = MARNetArgumentParser(SummaryArguments, prog=PROG, description=__doc__).parse(argv)
    markdown = summary_markdown(args.files, args.baseline, args.split)
    if args.output is None:
        print(markdown)
    else:
        atomic_write_text(args.output, markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
