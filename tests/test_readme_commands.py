"""The README's training example, copied into a shell as a user would: it must work as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- README-TRAIN-EXAMPLE"


def readme_block():
    """The bash block that follows the marker in README.md."""
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r".*?\n```bash\n(.*?)```", readme, flags=re.S)
    assert match, f"README.md has no bash block after {MARKER}"
    return match.group(1)


def test_readme_training_example_runs_as_written(tmp_path):
    (tmp_path / "data").symlink_to(REPO_ROOT / "data")  # the commands use paths relative to a clone's root
    bin_dir = Path(sys.executable).parent  # python and the marnet-* console scripts of this environment
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        ["bash", "-e", "-c", readme_block()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "food-demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["global_step"] > 0
    assert (run / "hub_repo" / "README.md").is_file() and (run / "hub_repo" / "model.safetensors").is_file()
    evaluation = json.loads(result.stdout[result.stdout.index("{\n") :])  # marnet-eval's JSON, after the dry run
    assert evaluation["per_split"]["test"] == metrics["per_split"]["test"]
