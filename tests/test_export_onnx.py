"""`marnet-export`: a saved MARNet's image-only graph in ONNX, run by a plain ONNX Runtime session fed by the saved
preprocessor config, gives PyTorch's logits at batch sizes other than the export's."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTImageProcessor

from hub_scripts.model_card import marnet_onnx_section
from marnet_cli.errors import CLIError
from modeling_marnet import MARNetForImageClassification
from modeling_marnet import export_onnx as export_module
from modeling_marnet.export_onnx import EXPORT_BATCH_SIZE, main
from tiny_marnet import IMAGE_SIZE, tiny_config

onnxruntime = pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed")


@pytest.fixture
def run_folder(tmp_path):
    """What marnet-train saves of a tiny full MARNet: the model and its image processor."""
    torch.manual_seed(0)
    folder = tmp_path / "run"
    MARNetForImageClassification(tiny_config("full")).save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def photos(count, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(count)]


def test_onnx_runtime_logits_match_pytorch_at_other_batch_sizes(run_folder, tmp_path, capsys, monkeypatch):
    output = tmp_path / "marnet-food-onnx"  # the folder the model card of org/marnet-food names
    assert main(["--model_name_or_path", str(run_folder), "--output_dir", str(output)]) == 0
    assert "ONNX Runtime's logits are within" in capsys.readouterr().out
    assert sorted(path.name for path in output.iterdir()) == ["config.json", "model.onnx", "preprocessor_config.json"]

    # What a user of the exported folder runs: no MARNet code, no torch.
    processor = AutoImageProcessor.from_pretrained(output)
    session = onnxruntime.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    id2label = json.loads((output / "config.json").read_text())["id2label"]
    model = MARNetForImageClassification.from_pretrained(run_folder).eval()
    for batch_size in (1, EXPORT_BATCH_SIZE + 3):
        images = photos(batch_size, seed=batch_size)
        pixel_values = processor(images=images, return_tensors="np")["pixel_values"]
        (logits,) = session.run(["logits"], {"pixel_values": pixel_values})
        with torch.no_grad():
            expected = model(pixel_values=torch.from_numpy(pixel_values)).logits.numpy()
        assert logits.shape == (batch_size, model.config.num_labels)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert id2label == {str(i): label for i, label in model.config.id2label.items()}

    # The model card's snippet, run as written next to the exported folder.
    section = marnet_onnx_section("org/marnet-food")
    assert "marnet-export --model_name_or_path org/marnet-food --output_dir marnet-food-onnx" in section
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photos(1, seed=7)[0]).save("dish.jpg")
    exec(snippet, {})
    assert capsys.readouterr().out.strip() in id2label.values()


def export_garbage(graph, args, path, **kwargs):
    with open(path, "wb") as onnx_file:
        onnx_file.write(b"not a graph")


def test_a_failed_check_writes_nothing(run_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.onnx, "export", export_garbage)
    monkeypatch.setattr(export_module, "onnx_runtime_logits", lambda path, pixel_values: np.full((3, 5), 1e3))
    output = tmp_path / "onnx"
    assert main(["--model_name_or_path", str(run_folder), "--output_dir", str(output)]) == 1
    assert "more than --atol 0.0001; nothing was written" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_folder_holding_other_files_is_never_replaced(run_folder, capsys):
    assert main(["--model_name_or_path", str(run_folder), "--output_dir", str(run_folder)]) == 2
    error = capsys.readouterr().err
    assert f"marnet-export: error: --output_dir {run_folder} holds [" in error and "'alignment.py'" in error
    assert "which no export writes: marnet-export replaces the whole folder" in error
    assert (run_folder / "model.safetensors").is_file()


def test_a_processor_that_cannot_save_itself_writes_nothing(run_folder, tmp_path, monkeypatch):
    """timm's TimmWrapperImageProcessor.save_pretrained writes nothing: the folder would have no way to be fed."""
    model = MARNetForImageClassification.from_pretrained(run_folder).eval()
    processor = AutoImageProcessor.from_pretrained(run_folder)
    monkeypatch.setattr(torch.onnx, "export", export_garbage)
    monkeypatch.setattr(
        export_module,
        "onnx_runtime_logits",
        lambda path, pixel_values: model(pixel_values=pixel_values).logits.detach().numpy(),
    )
    monkeypatch.setattr(type(processor), "save_pretrained", lambda self, folder: None)
    with pytest.raises(CLIError, match="cannot save a preprocessor_config.json"):
        export_module.export_onnx(model, processor, tmp_path / "onnx")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["--model_name_or_path", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "onnx")]) == 1
    assert f"marnet-export: error: --model_name_or_path {tmp_path / 'nothing'}: cannot load an image classifier" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "onnx").exists()
