"""benchmarks/accuracy.py end to end on a tiny fixture dataset and tower: two rows, one seed, two steps each."""

import json
import shlex
import sys

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
ROWS = ("baseline", "full-concat")


def benchmark_command(paths, *extra, rows=ROWS):
    return [
        sys.executable, str(SCRIPT), "--dataset", str(paths["dataset"]), "--vision-model", str(paths["tower"]),
        "--text-encoder", str(paths["text"]), "--rows", *rows, "--seeds", "0", "--max-steps", "2",
        "--batch-size", "8", "--image-size", "30", "--num-proc", "1", "--work-dir", str(paths["work"]),
        "--output", str(paths["output"]), *extra, "--", *tiny_model_args(),
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The paths of one finished tiny table and the CompletedProcess that made it."""
    root = tmp_path_factory.mktemp("accuracy")
    paths = {"dataset": save_dataset(root / "data"), "tower": save_vision_tower(root / "tower"),
             "text": save_text_encoder(root / "text"), "work": root / "work", "output": root / "out" / "acc.json"}
    completed = run_command(benchmark_command(paths))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return paths, completed


def test_json_has_every_run_and_row_summary(finished):
    paths, _ = finished
    report = json.loads(paths["output"].read_text())
    assert [(run["row"], run["seed"]) for run in report["runs"]] == [(row, 0) for row in ROWS]
    for run in report["runs"]:
        metrics = json.loads((paths["work"] / "runs" / run["row"] / "seed-0" / "metrics.json").read_text())
        assert (run["top1"], run["top5"], run["global_step"]) == (metrics["top1"], metrics["top5"], 2)
        assert run["split"] == "test" and run["process_seconds"] > 0
    assert "--ablation baseline" in report["runs"][0]["command"]
    assert "--text-encoder" not in report["runs"][0]["command"]
    assert "--fusion-mode concat" in report["runs"][1]["command"]
    for row, run in zip(ROWS, report["runs"]):
        assert report["rows"][row]["top1_mean"] == run["top1"]
        assert report["rows"][row]["top1_std"] == 0.0 and report["rows"][row]["num_seeds"] == 1
    assert report["dataset"]["splits"] == {"train": 24, "validation": 11, "test": 9}
    assert report["dataset"]["images_with_transparency"] == report["dataset"]["images_blank_after_rgb"] == 0
    assert report["dataset"]["num_texts"] == 44
    assert report["dataset"]["train_images_per_class"] == dict.fromkeys(
        ["tomato_soup", "pea_soup", "blueberry_pie", "banana_bread"], 6)
    assert report["config"]["image_size"] == 30 and report["config"]["seeds"] == [0]
    assert paths["output"].with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prints_a_markdown_row_per_ablation_row(finished):
    paths, completed = finished
    report = json.loads(paths["output"].read_text())
    lines = {line.split("|")[1].strip(): line for line in completed.stdout.splitlines() if line.startswith("| ")}
    baseline = report["rows"]["baseline"]["top1_mean"]
    for row in ROWS:
        top1 = report["rows"][row]["top1_mean"]
        assert f"| {100 * top1:.2f} ± 0.00 |" in lines[row]
        assert f"| {100 * (top1 - baseline):+.2f} |" in lines[row]


def test_rerun_reuses_finished_runs(finished):
    paths, _ = finished
    before = json.loads(paths["output"].read_text())
    completed = run_command(benchmark_command(paths))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("done before") == len(ROWS)
    after = json.loads(paths["output"].read_text())
    assert [run["top1"] for run in after["runs"]] == [run["top1"] for run in before["runs"]]


def test_failing_run_reports_its_log_and_writes_no_results(finished, tmp_path):
    """A trainer that fails (a stand-in launcher, so no second training is paid for) stops the table with exit 1,
    its log tail on stderr and no results file; the finished runs stay for the next call."""
    paths, _ = finished
    paths = {**paths, "output": tmp_path / "acc.json"}
    failing_trainer = shlex.join([sys.executable, "-c", "import sys; print('bad option'); sys.exit(2)"])
    completed = run_command(benchmark_command(paths, "--launcher", failing_trainer, rows=("ema",)))
    assert completed.returncode == 1
    assert "ema seed 0: marnet-train exited with 2" in completed.stderr
    assert "bad option" in completed.stderr and "Traceback" not in completed.stderr
    assert not paths["output"].exists()
    assert (paths["work"] / "runs" / "baseline" / "seed-0" / "metrics.json").is_file()
