"""Every ```python block of README.md runs as pasted, offline.

The blocks name Hub repos; the test builds tiny local stand-ins and substitutes their paths for the ids
(`HUB_STAND_INS`, the only change made to a block). Each block runs in its own Python process, as a user pasting it
would, in a folder holding the `dish.jpg` the blocks classify. The `trust_remote_code=True` block runs with the
MARNet package blocked, so it exercises the model code saved in the repo folder.
"""

import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor

from modeling_marnet import MARNetForImageClassification
from remote_code import BLOCK_MARNET_PACKAGE
from tiny_marnet import IMAGE_SIZE, tiny_config
from train_fixtures import (
    REPO_ROOT,
    make_dataset_dict,
    offline_env,
    save_dataset,
    save_text_encoder,
    save_vision_tower,
)

# Hub id in the README -> what the test puts in its place (a folder made by `make_stand_ins`).
HUB_STAND_INS = {
    "org/marnet-food172": "marnet-food172",  # a tiny trained-looking MARNet with its image processor
    "org/vireo-food172": "vireo-food172",  # the tiny colour dataset, one Parquet file per split
    "google/vit-base-patch16-224-in21k": "vit-tower",  # a tiny ViT tower
    "sentence-transformers/all-MiniLM-L6-v2": "text-encoder",  # a tiny BERT
}


def python_blocks():
    """(first line number, code) of each ```python block of README.md."""
    readme = (REPO_ROOT / "README.md").read_text()
    return [
        (readme.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
    ]


def substitute_hub_ids(code, root):
    for hub_id, folder in HUB_STAND_INS.items():
        code = code.replace(f'"{hub_id}"', repr(str(root / folder)))
    return code


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = MARNetForImageClassification(tiny_config("full")).eval()
    model.save_pretrained(root / "marnet-food172")  # with auto_map and the model files, as published
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(root / "marnet-food172")
    save_dataset(root / "vireo-food172", make_dataset_dict(), parquet=True)
    save_vision_tower(root / "vit-tower")
    save_text_encoder(root / "text-encoder")
    Image.new("RGB", (64, 48), "orange").save(root / "dish.jpg")
    return root


def test_the_blocks_are_found():
    """The parser finds the README's blocks (an empty parametrisation would pass silently)."""
    first_line, first_block = python_blocks()[0]
    assert len(python_blocks()) >= 5 and 'pipeline("image-classification", model="org/marnet-food172")' in first_block


def run_blocks_script(blocks):
    """A script that runs each (line, code) block in a fresh namespace; a traceback names the README line."""
    return "\n".join(
        f"exec(compile({code!r}, 'README.md, block at line {line}', 'exec'), {{'__name__': '__main__'}})"
        for line, code in blocks
    )


@pytest.mark.parametrize("remote_code", [False, True], ids=["with-package", "trust-remote-code"])
def test_readme_python_blocks_run(remote_code, stand_ins):
    """The package blocks share one process (each imports modeling_marnet itself); the `trust_remote_code=True`
    block runs in a process where the package cannot be imported."""
    blocks = [
        (line, substitute_hub_ids(code, stand_ins))
        for line, code in python_blocks()
        if ("trust_remote_code=True" in code) == remote_code
    ]
    script = (BLOCK_MARNET_PACKAGE if remote_code else "") + run_blocks_script(blocks)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=stand_ins,
        env=offline_env(HF_HOME=str(stand_ins / "hf_home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
