"""benchmarks/accuracy.py end to end on a tiny fixture dataset and tower: the tuning -> final -> paired-difference
protocol, with one grid point, one loss-weight variant and two seeds."""

import json
import re
import shlex
import statistics
import sys
from pathlib import Path

import pytest

from train_fixtures import (
    REPO_ROOT,
    run_command,
    save_dataset,
    save_text_encoder,
    save_vision_tower,
    tiny_model_args,
)

SCRIPT = REPO_ROOT / "benchmarks" / "accuracy.py"
SUMMARY = REPO_ROOT / "benchmarks" / "summary.py"
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from paired_stats import format_interval, interval  # noqa: E402

ROWS = ("baseline", "marnet")


def benchmark_command(paths, *extra, rows=ROWS):
    return [
        sys.executable,
        str(SCRIPT),
        "--dataset",
        str(paths["dataset"]),
        "--vision-model",
        str(paths["tower"]),
        "--text-encoder",
        str(paths["text"]),
        "--rows",
        *rows,
        "--proxies",
        "original",
        "--grid",
        "1e-3:0.5",
        "--weight-grid",
        "alignment_loss_weight=0.5",
        "--tune-seeds",
        "0",
        "--seeds",
        "0",
        "1",
        "--train-fractions",
        "0.5",
        "--tune-fraction",
        "0.5",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "30",
        "--num-proc",
        "1",
        "--parallel",
        "2",  # two single-threaded runs at a time, as on the 2-core CI machine
        "--work-dir",
        str(paths["work"]),
        "--output",
        str(paths["output"]),
        *extra,
        "--",
        *tiny_model_args(),
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The paths of one finished tiny protocol and the CompletedProcess that made it."""
    root = tmp_path_factory.mktemp("accuracy")
    paths = {
        "dataset": save_dataset(root / "data"),
        "tower": save_vision_tower(root / "tower"),
        "text": save_text_encoder(root / "text"),
        "work": root / "work",
        "output": root / "out" / "acc.json",
    }
    completed = run_command(benchmark_command(paths), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return paths, completed


def test_tuning_reads_validation_only_and_searches_weights_for_text_rows(finished):
    paths, _ = finished
    report = json.loads(paths["output"].read_text())
    assert set(report["tuning"]) == {"shared/baseline", "original/marnet"}
    assert list(report["tuning"]["shared/baseline"]["validation_top1"]) == ["lr0.001-x0.5"]
    # The text row also tries the loss-weight variant at its best grid point.
    assert list(report["tuning"]["original/marnet"]["validation_top1"]) == [
        "lr0.001-x0.5",
        "lr0.001-x0.5-alignment_loss_weight0.5",
    ]
    for row in report["tuning"].values():
        assert row["chosen"] in row["validation_top1"]
        assert row["validation_top1"][row["chosen"]] == max(row["validation_top1"].values())


def test_final_rows_are_paired_by_seed_and_match_the_trainers_test_metrics(finished):
    paths, _ = finished
    report = json.loads(paths["output"].read_text())
    assert set(report["results"]) == {"original@0.5"}
    group = report["results"]["original@0.5"]
    for row, values in group.items():
        proxy = "shared" if row == "baseline" else "original"
        folders = [
            paths["work"] / "runs" / f"{proxy}-train0.5" / row / values["variant"] / f"seed-{seed}" for seed in (0, 1)
        ]
        tests = [json.loads((folder / "metrics.json").read_text())["per_split"]["test"] for folder in folders]
        assert values["top1"] == [test["top1"] for test in tests]
        assert values["top1_mean"] == pytest.approx(statistics.fmean(values["top1"]))
        differences = [a - b for a, b in zip(values["top1"], group["baseline"]["top1"])]
        assert values["paired_difference_mean"] == pytest.approx(statistics.fmean(differences))
        assert values["paired_difference_std"] == pytest.approx(statistics.stdev(differences))


def test_training_fractions_keep_a_stratified_prefix_of_each_class(tmp_path):
    import datasets

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from accuracy_data import prepare_train_subset

    source = save_dataset(tmp_path / "data")
    full = datasets.load_from_disk(str(source))
    labels = full["train"]["label"]  # 6 rows per class
    for fraction, cap, kept_per_class in ((0.25, None, 2), (1.0, 4, 4), (0.5, 4, 2)):  # ceil(0.25 * 6) = 2, ...
        subset = datasets.load_from_disk(str(prepare_train_subset(source, fraction, cap)))
        expected = [i for i, label in enumerate(labels) if labels[: i + 1].count(label) <= kept_per_class]
        assert subset["train"]["image_id"] == [full["train"][i]["image_id"] for i in expected]
        assert len(subset["validation"]) == len(full["validation"]) and len(subset["test"]) == len(full["test"])
    assert prepare_train_subset(source, 1.0, None) == source


def test_runs_get_the_protocol_options(finished):
    paths, _ = finished
    report = json.loads(paths["output"].read_text())
    for run in report["runs"]:
        command = run["command"]
        assert "--augment" in command and "--tower-lr-multiplier 0.5" in command and "--learning-rate 0.001" in command
        assert ("--text-encoder" in command) == (run["row"] != "baseline")
    assert report["config"]["seeds"] == [0, 1] and report["config"]["tune_seeds"] == [0]
    assert report["text"]["original"]["num_texts"] == 44
    assert 0 <= report["text"]["original"]["text_probe_validation_top1"] <= 1
    for suffix in (".png", "_curves.png"):
        image = paths["output"].with_name(paths["output"].stem + suffix)
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prints_a_markdown_table_per_group_with_paired_differences(finished):
    paths, completed = finished
    report = json.loads(paths["output"].read_text())
    marnet = report["results"]["original@0.5"]["marnet"]
    differences = [
        100 * (a - b) for a, b in zip(marnet["top1"], report["results"]["original@0.5"]["baseline"]["top1"])
    ]
    half_width = 12.706 * statistics.stdev(differences) / 2**0.5  # two seeds: t(0.975, 1) standard errors
    paired = marnet["paired_difference_interval"]
    assert paired["mean"] == pytest.approx(statistics.fmean(differences))
    assert paired["half_width"] == pytest.approx(half_width, rel=1e-3)
    expected = (
        f"| {paired['mean']:+.2f} ± {paired['half_width']:.2f} | {paired['std']:.2f} | {marnet['seeds_for_target']} |"
    )
    assert expected in completed.stdout and "seeds for ±1 |" in completed.stdout


def test_summary_merges_files_seed_by_seed_and_refuses_two_runs_under_one_name(finished, tmp_path):
    paths, _ = finished
    report = json.loads(paths["output"].read_text())
    paired = report["results"]["original@0.5"]["marnet"]["paired_difference_interval"]
    # The same results split into two files, one seed each: merged back, the paired interval is the protocol's.
    halves = []
    for index, seed in enumerate(report["config"]["seeds"]):
        half = json.loads(json.dumps(report))
        half["config"]["seeds"] = [seed]
        for values in half["results"]["original@0.5"].values():
            values["top1"] = [values["top1"][index]]
        halves.append(tmp_path / f"seed-{seed}.json")
        halves[-1].write_text(json.dumps(half))
    completed = run_command([sys.executable, str(SUMMARY), *map(str, halves), "--output", str(tmp_path / "s.md")])
    assert completed.returncode == 0, completed.stderr
    table = (tmp_path / "s.md").read_text()
    assert f"{Path(report['dataset']['path']).name}, 50 % of the training split, original text" in table
    assert "| marnet | 2 | " in table and f"| {paired['mean']:+.2f} ± {paired['half_width']:.2f} |" in table

    # Validation top-1, paired with another row: what a configuration is chosen on.
    group = report["results"]["original@0.5"]
    against = interval(
        [100 * (b - m) for b, m in zip(group["baseline"]["validation_top1"], group["marnet"]["validation_top1"])]
    )
    completed = run_command(
        [sys.executable, str(SUMMARY), str(paths["output"]), "--split", "validation", "--baseline", "marnet"]
    )
    assert completed.returncode == 0, completed.stderr
    assert "original text, validation top-1" in completed.stdout
    assert (
        "| baseline | 2 | " in completed.stdout and f"| {format_interval(against, signed=True)} |" in completed.stdout
    )

    # A seed scored differently in two files is two runs under one name: refused, naming file and seed.
    conflicting = json.loads(halves[0].read_text())
    conflicting["results"]["original@0.5"]["baseline"]["top1"][0] += 0.01
    (tmp_path / "conflicting.json").write_text(json.dumps(conflicting))
    completed = run_command([sys.executable, str(SUMMARY), str(halves[0]), str(tmp_path / "conflicting.json")])
    seed = report["config"]["seeds"][0]
    assert completed.returncode == 1 and f"conflicting.json: seed {seed} scores" in completed.stderr
    # Rows are paired on the seeds both have; a row sharing none with the baseline cannot be paired at all.
    baseline_only, marnet_only = json.loads(halves[0].read_text()), json.loads(halves[1].read_text())
    del baseline_only["results"]["original@0.5"]["marnet"], marnet_only["results"]["original@0.5"]["baseline"]
    for name, results in (("baseline_only", baseline_only), ("marnet_only", marnet_only)):
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
    files = [str(tmp_path / "baseline_only.json"), str(tmp_path / "marnet_only.json")]
    completed = run_command([sys.executable, str(SUMMARY), *files])
    assert (
        completed.returncode == 1 and "row marnet (seeds [1]) shares no seed with baseline (seeds" in completed.stderr
    )


def test_summary_takes_and_renames_rows_of_a_file(finished, tmp_path):
    """`PATH:ROW,ROW=NEW` merges a file whose `marnet` is another configuration than the first file's: the row is
    left out or kept under another name instead of refusing the whole file."""
    paths, _ = finished
    report = json.loads(paths["output"].read_text())
    group = report["results"]["original@0.5"]
    other = json.loads(json.dumps(report))  # the same baseline runs, another `marnet`
    other["results"]["original@0.5"]["marnet"]["top1"] = [top1 + 0.02 for top1 in group["marnet"]["top1"]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    first, second = str(paths["output"]), str(tmp_path / "other.json")
    assert run_command([sys.executable, str(SUMMARY), first, second]).returncode == 1

    completed = run_command([sys.executable, str(SUMMARY), first, f"{second}:baseline"])
    assert completed.returncode == 0, completed.stderr
    assert "| marnet | 2 | " in completed.stdout and "marnet-v2" not in completed.stdout

    completed = run_command([sys.executable, str(SUMMARY), first, f"{second}:baseline,marnet=marnet-v2"])
    assert completed.returncode == 0, completed.stderr
    moved = interval([100 * (m + 0.02 - b) for b, m in zip(group["baseline"]["top1"], group["marnet"]["top1"])])
    assert "| marnet-v2 | 2 | " in completed.stdout
    assert f"| {format_interval(moved, signed=True)} |" in completed.stdout

    for spec, message in (
        (f"{second}:baseline,ingredients", f"{second}: no row ingredients; it has baseline, marnet."),
        (f"{second}:baseline,marnet=", "expected PATH or PATH:ROW,ROW=NEW,..."),
        (f"{second}:baseline=b,marnet=b", "two rows would get the same name"),
        (f"{tmp_path / 'missing.json'}:baseline", "missing.json: no such file"),
    ):
        completed = run_command([sys.executable, str(SUMMARY), first, spec])
        assert completed.returncode == 2 and message in completed.stderr, (spec, completed.stderr)


def test_rerun_reuses_finished_runs(finished):
    paths, _ = finished
    before = json.loads(paths["output"].read_text())
    completed = run_command(benchmark_command(paths), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(r"seed \d+: validation top-1", completed.stdout) is None  # nothing trained again
    after = json.loads(paths["output"].read_text())
    assert after["results"] == before["results"]


def test_failing_run_reports_its_log_and_writes_no_results(finished, tmp_path):
    """A trainer that fails (a stand-in launcher, so no second training is paid for) stops the protocol with exit 1,
    its log tail on stderr and no results file; the finished runs stay for the next call."""
    paths, _ = finished
    paths = {**paths, "output": tmp_path / "acc.json"}
    failing_trainer = shlex.join([sys.executable, "-c", "import sys; print('bad option'); sys.exit(2)"])
    completed = run_command(benchmark_command(paths, "--launcher", failing_trainer, rows=("baseline",)), timeout=300)
    assert completed.returncode == 1
    assert "baseline (lr0.001-x0.5, seed 0): the trainer exited with 2" in completed.stderr
    assert "bad option" in completed.stderr and "Traceback" not in completed.stderr
    assert not paths["output"].exists()
    assert (
        paths["work"] / "runs" / "original-train0.5" / "marnet" / "lr0.001-x0.5" / "seed-0" / "metrics.json"
    ).is_file()


def test_grid_and_seed_errors_are_clear():
    completed = run_command([sys.executable, str(SCRIPT), "--grid", "fast"])
    assert (
        completed.returncode == 2 and "expected LR:TOWER_MULTIPLIER such as 1e-3:0.1, got 'fast'" in completed.stderr
    )
    completed = run_command([sys.executable, str(SCRIPT), "--tune-seeds", "7", "--seeds", "0", "1"])
    assert completed.returncode == 2 and "--tune-seeds [7] must be among --seeds [0, 1]" in completed.stderr
    completed = run_command([sys.executable, str(SCRIPT), "--rows", "marnet"])
    assert completed.returncode == 2 and "--rows must include 'baseline'" in completed.stderr


def test_text_probe_only_reports_the_text_statistics_and_trains_nothing(tmp_path, capsys):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from accuracy import main

    dataset, work = save_dataset(tmp_path / "data"), tmp_path / "work"
    text_encoder = save_text_encoder(tmp_path / "text")
    argv = ["--dataset", str(dataset), "--text-encoder", str(text_encoder), "--work-dir", str(work)]
    assert main([*argv, "--text-probe-only"]) == 0
    statistics = json.loads(capsys.readouterr().out)["original"]
    assert (statistics["texts_naming_their_class"], statistics["num_texts"]) == (44, 44)  # "tomato" for tomato_soup
    assert 0 <= statistics["text_probe_validation_top1"] <= 1
    assert sorted(path.name for path in work.iterdir()) == ["text_statistics.json"]  # no tower, data or runs
    cached = json.loads((work / "text_statistics.json").read_text())
    assert cached == {f"{dataset.name}|{text_encoder}": statistics}  # what the protocol's report reuses


def test_rows_take_the_packages_names():
    """The paper-literal rows are the package's PAPER_LITERAL as marnet-train options, and there is a full-<mode>
    row per fusion mode of the package; the options stay as finished runs recorded them (or they would train again)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from accuracy_rows import PAPER_LITERAL_OPTIONS, ROWS
    from modeling_marnet.configuration_marnet import FUSION_MODES, PAPER_LITERAL

    assert PAPER_LITERAL_OPTIONS == [
        "--marnet-config",
        "visual_features=projection",
        "--marnet-config",
        "reconstruction_training=one_step",
        "--marnet-config",
        "diffusion_timesteps=uniform",
        "--marnet-config",
        "text_normalization=none",
        "--marnet-config",
        "text_classification_weight=0",
        "--marnet-config",
        "distillation_weight=0",
    ]
    assert all(f"{field}={value}" in PAPER_LITERAL_OPTIONS for field, value in PAPER_LITERAL.items())
    # The paper rows ran with ITA weighted 0.1, the default of the time: spelled out since the default is 1.0.
    earlier_weight = ["--marnet-config", "alignment_loss_weight=0.1"]
    assert ROWS["paper"].options == ["--ablation", "full", *PAPER_LITERAL_OPTIONS, *earlier_weight]
    assert [row for row in ROWS if row.startswith("full-")] == [f"full-{mode}" for mode in FUSION_MODES]


def test_summary_names_a_file_it_cannot_read(tmp_path):
    missing = tmp_path / "missing.json"
    completed = run_command([sys.executable, str(SUMMARY), str(missing)])
    assert completed.returncode == 2 and f"{missing}: no such file" in completed.stderr
    for name, text in (("broken.json", "{"), ("other.json", '{"rows": []}')):
        (tmp_path / name).write_text(text)
        completed = run_command([sys.executable, str(SUMMARY), str(tmp_path / name)])
        assert completed.returncode == 1 and f"{tmp_path / name}: " in completed.stderr
    assert (
        "not a readable JSON file" in run_command([sys.executable, str(SUMMARY), str(tmp_path / "broken.json")]).stderr
    )
    assert "expected the JSON of accuracy.py" in completed.stderr
