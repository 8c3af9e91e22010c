"""benchmarks/timm_anchor.py on a tiny timm tower: a run folder in the layout marnet-train writes, which
benchmarks/accuracy.py reads alike."""

import json
import sys

from marnet_cli.run_folder import RunFolder
from train_fixtures import REPO_ROOT, run_command, save_dataset, save_timm_tower

SCRIPT = REPO_ROOT / "benchmarks" / "timm_anchor.py"


def anchor_command(dataset, tower, output_dir):
    """Two epochs at 32 px, in batches of 8."""
    options = {"dataset": dataset, "vision-model": tower, "output-dir": output_dir, "num-train-epochs": 2}
    options.update({"per-device-train-batch-size": 8, "image-size": 32})
    return [sys.executable, str(SCRIPT), *[f"--{name}={value}" for name, value in options.items()], "--channels-last"]


def test_writes_metrics_and_history_as_marnet_train_does(tmp_path):
    dataset, tower = save_dataset(tmp_path / "data"), save_timm_tower(tmp_path / "tower")
    completed = run_command(anchor_command(dataset, tower, tmp_path / "run"), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = RunFolder(tmp_path / "run")
    metrics = run.read_metrics()
    assert metrics["split"] == "test" and list(metrics["per_split"]) == ["validation", "test"]
    assert metrics["epochs"] == 2 and metrics["best_step"] <= metrics["global_step"]
    history = run.history()
    assert [record["epoch"] for record in history] == [1, 2]
    best = next(record for record in history if record["step"] == metrics["best_step"])
    assert best["eval_top1"] == metrics["per_split"]["validation"]["top1"]
    assert sorted(path.name for path in run.path.iterdir()) == ["logs", "metrics.json"]


def test_a_tower_of_another_architecture_is_refused(tmp_path):
    dataset, tower = save_dataset(tmp_path / "data"), save_timm_tower(tmp_path / "tower")
    config = json.loads((tower / "config.json").read_text())
    (tower / "config.json").write_text(json.dumps({**config, "architecture": "resnet18"}))
    completed = run_command(anchor_command(dataset, tower, tmp_path / "run"), timeout=300)
    assert completed.returncode == 1
    assert "weights do not match timm's resnet18" in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
