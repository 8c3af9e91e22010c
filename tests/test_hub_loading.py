"""A published MARNet repo loads by repo id from an offline Hub cache, with and without the MARNet package.

The repo folder written by `marnet-publish --dry-run` is laid out in a temporary HF_HOME exactly as huggingface_hub
stores a download (blobs named by etag, refs/main, snapshots/<commit>/ symlinks). Each load runs in a fresh Python
process so HF_HOME and HF_HUB_OFFLINE are read at import time, as for a user.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hub_scripts.publish import main as publish_main
from remote_code import BLOCK_MARNET_PACKAGE
from test_publish import REPO_ID, write_training_output

COMMIT = hashlib.sha1(b"marnet-publish test commit").hexdigest()
# The package registers MARNet with the Auto classes; remote-code users have only the repo's files.
PROLOGUES = {"installed": "import modeling_marnet\n", "remote-code": BLOCK_MARNET_PACKAGE}

LOADER = r"""
import json, sys

mode, image_path, out_path = sys.argv[1:]

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

trust = mode == "remote-code"
repo_id = "org/marnet-food172"
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=trust).eval()
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=trust)
image = Image.open(image_path)
with torch.no_grad():
    logits = model(**processor(image, return_tensors="pt")).logits[0]
classifier = pipeline("image-classification", model=repo_id, trust_remote_code=trust)
json.dump({
    "model_module": type(model).__module__,
    "logits": logits.tolist(),
    "pipeline": classifier(image, top_k=5),
    "marnet_imported": "modeling_marnet" in sys.modules,
}, open(out_path, "w"))
"""


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lay_out_as_hub_download(folder, hf_home, repo_id, commit):
    """Store `folder` in `hf_home` the way `snapshot_download` would have stored `repo_id` at `commit`."""
    repo_cache = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_cache / "snapshots" / commit
    (repo_cache / "blobs").mkdir(parents=True)
    (repo_cache / "refs").mkdir()
    snapshot.mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    for file in sorted(Path(folder).iterdir()):
        data = file.read_bytes()
        # LFS files are stored under their sha256, regular git files under their git blob sha1.
        etag = hashlib.sha256(data).hexdigest() if file.suffix == ".safetensors" else git_blob_sha1(data)
        (repo_cache / "blobs" / etag).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", etag))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The original model, a test image, and an HF_HOME holding the published repo."""
    root = tmp_path_factory.mktemp("hub_loading")
    model = write_training_output(root / "run")
    assert (
        publish_main([str(root / "run"), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(root / "repo")]) == 0
    )
    lay_out_as_hub_download(root / "repo", root / "hf_home", REPO_ID, COMMIT)
    image_path = root / "dish.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(image_path)
    return model, image_path, root


def load_in_fresh_process(mode, published):
    _, image_path, root = published
    out_path = root / f"{mode}.json"
    workdir = root / f"cwd-{mode}"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", PROLOGUES[mode] + LOADER, mode, str(image_path), str(out_path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out_path.read_text())


def expected_outputs(published):
    """Logits of the original in-memory model and the pipeline answer they imply."""
    model, image_path, root = published
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(root / "run")
    with torch.no_grad():
        logits = model(**processor(Image.open(image_path), return_tensors="pt")).logits[0]
    scores, class_ids = logits.softmax(-1).topk(5)
    return logits, [(model.config.id2label[int(i)], float(s)) for s, i in zip(scores, class_ids)]


def check_same_as_original(loaded, published):
    logits, top5 = expected_outputs(published)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, rtol=1e-5, atol=1e-5)
    assert [entry["label"] for entry in loaded["pipeline"]] == [label for label, _ in top5]
    assert [entry["score"] for entry in loaded["pipeline"]] == pytest.approx([score for _, score in top5], abs=1e-5)


def test_loads_by_repo_id_offline_with_the_package_installed(published):
    loaded = load_in_fresh_process("installed", published)
    assert loaded["model_module"] == "modeling_marnet.modeling_marnet"  # the package, not the repo's copy
    check_same_as_original(loaded, published)


def test_loads_by_repo_id_offline_with_remote_code_only(published):
    loaded = load_in_fresh_process("remote-code", published)
    assert loaded["model_module"].startswith("transformers_modules.")
    assert not loaded["marnet_imported"]
    check_same_as_original(loaded, published)
