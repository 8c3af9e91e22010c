"""A diverging run stops with a clear error instead of saving NaN weights and a metrics.json that claims an
accuracy; non-finite loss weights are refused before anything runs; `--skip_nonfinite_loss` skips such steps."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertTokenizer

from marnet_cli.commands import train as main
from train_fixtures import save_text_encoder, train_argv


def train_args(workspace, output_dir, *extra):
    return train_argv(workspace, output_dir, "--max-steps", 8, "--checkpointing-steps", 2, *extra)


def test_a_diverging_run_stops_before_the_first_nonfinite_step(workspace, tmp_path, capsys):
    output_dir = tmp_path / "diverged"
    assert main(train_args(workspace, output_dir, "--learning-rate", "1e6")) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("marnet-train: error: Step 3: the loss is nan (non-finite terms: ")
    assert "visual_classification_loss=nan" in error and "--skip_nonfinite_loss" in error
    assert not (output_dir / "metrics.json").exists() and not (output_dir / "model.safetensors").exists()
    checkpoint = load_file(output_dir / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert all(tensor.isfinite().all() for tensor in checkpoint.values())  # what was saved before is intact


def test_skip_nonfinite_loss_skips_those_steps_and_counts_them(workspace, tmp_path, caplog):
    output_dir = tmp_path / "skipped"
    with caplog.at_level(logging.WARNING):
        assert (
            main(
                train_args(
                    workspace, output_dir, "--learning-rate", "1e6", "--skip-nonfinite-loss", "--save-total-limit", "4"
                )
            )
            == 0
        )
    assert "Step 3: non-finite loss, step skipped (--skip_nonfinite_loss); 1 skipped so far." in caplog.text
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 8 and metrics["skipped_steps"] == 6
    weights = load_file(output_dir / "checkpoints" / "checkpoint-8" / "model.safetensors")
    step2 = load_file(output_dir / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert all(tensor.isfinite().all() for tensor in weights.values())
    assert all(torch.equal(weights[name], step2[name]) for name in weights)  # no skipped step touched them


def test_nonfinite_text_features_are_refused_before_training(workspace, tmp_path, capsys):
    # An encoder whose embedding of "banana" is NaN: every text with a banana gets NaN features.
    encoder = save_text_encoder(tmp_path / "bert")
    # A tokenizer that knows the fixture's words (transformers 5 ignores `vocab_file=`, which the fixture passes).
    BertTokenizer(vocab=str(encoder / "vocab.txt")).save_pretrained(encoder)
    weights = load_file(encoder / "model.safetensors")
    banana = (encoder / "vocab.txt").read_text().split().index("banana")
    name = next(key for key in weights if key.endswith("word_embeddings.weight"))
    weights[name][banana] = float("nan")
    save_file(weights, encoder / "model.safetensors", metadata={"format": "pt"})
    argv = train_args(workspace, tmp_path / "out", "--text-encoder", encoder, "--text-cache-dir", tmp_path / "cache")
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"marnet-train: error: --text_encoder {encoder} gives NaN or infinite features for 6 of 24 texts of split "
        "'train', first rows [3, 7, 11, 15, 19]. Check the encoder's weights and those texts."
    )
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("value", ["Infinity", "NaN", "-1"])
def test_nonfinite_or_negative_loss_weights_are_refused_before_anything_runs(workspace, tmp_path, capsys, value):
    output_dir = tmp_path / "weights"
    assert main(train_args(workspace, output_dir, f"--marnet-config=visual_ce_weight={value}")) == 2
    error = capsys.readouterr().err
    assert "marnet-train: error: MARNet configuration: `visual_ce_weight` must be a finite number >= 0, got " in error
    assert not output_dir.exists()
