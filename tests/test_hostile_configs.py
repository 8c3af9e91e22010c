"""Config files with absurd sizes: refused before anything is allocated, and weights that do not match their config
named as such. Each attack runs under a memory bound (`bounded.py`), so a regression fails instead of swapping."""

import json

from transformers import ViTConfig, ViTImageProcessor

from bounded import memory_limit
from marnet_cli.commands import train as train_main
from modeling_marnet import MARNetForImageClassification
from modeling_marnet.evaluate import main as eval_main
from tiny_marnet import IMAGE_SIZE, tiny_config
from train_fixtures import CLASS_COLOURS, save_dataset


def test_a_tower_config_too_large_for_memory_is_refused_before_building(tmp_path, capsys):
    tower = tmp_path / "tower"
    ViTConfig(
        hidden_size=65536, num_hidden_layers=48, num_attention_heads=64, intermediate_size=4 * 65536
    ).save_pretrained(tower)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tower)
    argv = ["--dataset", str(save_dataset(tmp_path / "dataset")), "--vision_model", str(tower), "--ablation"]
    argv += ["baseline", "--output_dir", str(tmp_path / "run"), "--report_to", "none"]
    with memory_limit(2**31):
        assert train_main(argv) == 1
    error = capsys.readouterr().err
    assert f"marnet-train: error: --vision_model {tower}: its config describes a model of 2,4" in error
    assert "GiB of float32 weights, more than the" in error and "Traceback" not in error


def test_a_model_config_that_its_weights_do_not_match_is_a_clear_error(tmp_path, capsys):
    model = tmp_path / "model"
    MARNetForImageClassification(tiny_config(id2label=dict(enumerate(CLASS_COLOURS)))).save_pretrained(model)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    argv = ["--model_name_or_path", str(model), "--dataset", str(save_dataset(tmp_path / "dataset", parquet=True))]
    for width, message in [
        (2**20, "its config describes a model of "),  # 2**20-wide denoiser layers: terabytes
        (64, "its weights do not have the shapes its config.json describes"),
    ]:
        (model / "config.json").write_text(json.dumps({**config, "denoiser_hidden_size": width}))
        with memory_limit(2**31):
            assert eval_main(argv) == 1
        error = capsys.readouterr().err
        assert f"marnet-eval: error: --model_name_or_path {model}: {message}" in error and "Traceback" not in error
