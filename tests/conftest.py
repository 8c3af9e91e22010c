"""Fixtures shared by the test modules.

`tiny_inputs` builds the read-only inputs of the training tests once per session (the tiny dataset in both formats,
with and without text, the tiny ViT tower and tiny BERT encoders; `train_fixtures` makes each of them). `workspace`
gives each module those inputs plus a folder of its own (`root`) for its runs and text caches, so that modules never
see each other's outputs. A module that needs more (a finished run, another dataset) overrides `workspace` and
requests the shared one by the same name.
"""

import pytest

from train_fixtures import make_dataset_dict, save_dataset, save_text_encoder, save_vision_tower


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory):
    """{name: path}: `dataset` (save_to_disk), `parquet` (one Parquet file per split), `no_text` (no text column),
    `tower`, `bert` (16 wide, the tiny configs' text width) and `bert24` (24 wide, a mismatching encoder)."""
    root = tmp_path_factory.mktemp("tiny_inputs")
    return {
        "dataset": save_dataset(root / "dataset"),
        "parquet": save_dataset(root / "parquet", parquet=True),
        "no_text": save_dataset(root / "no_text", make_dataset_dict(with_text=False)),
        "tower": save_vision_tower(root / "tower"),
        "bert": save_text_encoder(root / "bert"),
        "bert24": save_text_encoder(root / "bert24", hidden_size=24),
    }


@pytest.fixture(scope="module")
def workspace(tiny_inputs, tmp_path_factory, request):
    """The shared tiny inputs and `root`, this module's own folder."""
    return {**tiny_inputs, "root": tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])}
