"""MARNet under `transformers.Trainer`: the README's recipe (a collator yielding `text_embeds`,
`remove_unused_columns=False`, label names) trains with evaluation, and `compute_metrics` as written in transformers'
`examples/pytorch/image-classification/run_image_classification.py` gets the logits alone."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    ViTImageProcessor,
)
from transformers.modeling_outputs import ImageClassifierOutput

from hub_scripts.publish import main as publish_main
from marnet_cli.commands import evaluate as evaluate_command
from modeling_marnet import MARNetConfig, MARNetForImageClassification, MARNetImageClassifierOutput
from tiny_marnet import tiny_config
from train_fixtures import make_dataset_dict, save_dataset

TINY_HEADS = {
    "projection_dim": 8,
    "denoiser_hidden_size": 24,
    "timestep_embedding_dim": 8,
    "num_train_timesteps": 50,
    "num_inference_steps": 3,
}


def compute_metrics(p):
    """`compute_metrics` of run_image_classification.py, with numpy in place of `evaluate.load("accuracy")`."""
    return {"accuracy": (np.argmax(p.predictions, axis=1) == p.label_ids).mean()}


@pytest.fixture(scope="module")
def recipe(workspace):
    """The README's "Train with transformers.Trainer" recipe on the tiny colour dataset, a tiny ViT and a tiny BERT."""
    root, tower, text_encoder_dir = workspace["root"], workspace["tower"], workspace["bert"]
    dataset = make_dataset_dict()
    label_names = dataset["train"].features["label"].names

    tokenizer = AutoTokenizer.from_pretrained(text_encoder_dir)
    text_encoder = AutoModel.from_pretrained(text_encoder_dir).eval()

    @torch.no_grad()
    def embed_text(batch):
        tokens = tokenizer(batch["text"], padding=True, truncation=True, return_tensors="pt")
        hidden = text_encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None]
        return {"text_embeds": (hidden * mask).sum(1) / mask.sum(1)}  # mean pooling, (B, D)

    train = dataset["train"].map(embed_text, batched=True, batch_size=8)
    image_processor = AutoImageProcessor.from_pretrained(tower)

    def collate(examples):
        batch = {
            "pixel_values": image_processor([e["image"].convert("RGB") for e in examples], return_tensors="pt")[
                "pixel_values"
            ],
            "labels": torch.tensor([e["label"] for e in examples]),
        }
        if "text_embeds" in examples[0]:  # the training split only: evaluation sees images alone
            batch["text_embeds"] = torch.tensor([e["text_embeds"] for e in examples])
        return batch

    torch.manual_seed(0)
    model = MARNetForImageClassification.from_vision_pretrained(
        tower,
        text_hidden_size=text_encoder.config.hidden_size,
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        **TINY_HEADS,
    )
    args = TrainingArguments(
        root / "run",
        remove_unused_columns=False,  # the collator needs the `image` column and the `text_embeds`
        label_names=["labels"],
        eval_strategy="epoch",
        num_train_epochs=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=train,
        eval_dataset=dataset["validation"],
        compute_metrics=compute_metrics,
    )
    trainer.train()
    return trainer, dataset, collate


def test_trainer_trains_and_evaluates_with_the_example_compute_metrics(recipe):
    trainer, dataset, collate = recipe
    evaluations = [record for record in trainer.state.log_history if "eval_accuracy" in record]
    assert len(evaluations) == 2  # one per epoch

    metrics = trainer.evaluate()
    model = trainer.model.eval()
    with torch.no_grad():
        batch = collate(list(dataset["validation"]))
        logits = model(pixel_values=batch["pixel_values"]).logits
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
    assert metrics["eval_loss"] == pytest.approx(F.cross_entropy(logits, batch["labels"]).item(), rel=1e-4)
    assert metrics["eval_accuracy"] > 0.25  # four colours: better than chance after 12 steps

    predictions = trainer.predict(dataset["validation"])
    assert isinstance(predictions.predictions, np.ndarray)  # the logits alone, not a tuple of every output
    np.testing.assert_allclose(predictions.predictions, logits.numpy(), rtol=1e-4, atol=1e-5)


def test_trainer_leaves_every_output_but_the_logits_out_of_its_predictions():
    extra = {field.name for field in dataclasses.fields(MARNetImageClassifierOutput)}
    extra -= {field.name for field in dataclasses.fields(ImageClassifierOutput)}
    assert set(MARNetConfig.keys_to_ignore_at_inference) == extra


class FourImages(torch.utils.data.Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(4, 3, 30, 30, generator=generator)
        self.labels = torch.tensor([0, 1, 2, 3])

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path):
    """Trainer scales MARNet's batch-mean loss for gradient accumulation itself (`accepts_loss_kwargs = False`); no
    clipping, which would hide a doubled gradient."""

    def one_update(batch_size, accumulation):
        torch.manual_seed(0)
        model = MARNetForImageClassification(tiny_config("baseline"))
        args = TrainingArguments(
            tmp_path / f"run-{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=0,
        )
        Trainer(model=model, args=args, train_dataset=FourImages()).train()
        return model.visual_classifier.weight.detach()

    torch.testing.assert_close(one_update(2, 2), one_update(4, 1))


def test_a_trainer_folder_is_published_once_measured_and_described(recipe, tmp_path, capsys):
    """`Trainer.save_model` output lacks the run records the card is built from: the refusal names the command and
    keys that complete it, and once they are added the folder publishes."""
    trainer, dataset, _ = recipe
    folder, repo = tmp_path / "trainer-model", tmp_path / "repo"
    trainer.save_model(folder)
    trainer.state.save_to_json(folder / "trainer_state.json")
    ViTImageProcessor(size={"height": 30, "width": 30}).save_pretrained(folder)
    publish = [str(folder), "--hub_model_id", "org/marnet-trainer", "--dry_run", "--output_dir", str(repo)]

    assert publish_main(publish) == 1
    error = capsys.readouterr().err
    assert "lacks metrics.json and training_args.json, which marnet-train writes" in error
    assert "trainer_state.json, training_args.bin: a transformers.Trainer folder" in error
    assert f"marnet-eval --model_name_or_path {folder} --dataset_name DATASET --split test" in error
    assert '{"dataset": "...", "vision_model": "...", "text_encoder": "...", "ablation": "..."}' in error

    data = save_dataset(tmp_path / "data", dataset)
    measure = ["--model_name_or_path", str(folder), "--dataset_name", str(data), "--split", "test"]
    assert evaluate_command([*measure, "--metrics_file", str(folder / "metrics.json")]) == 0
    settings = {"dataset": "org/tiny-colours", "vision_model": "org/tiny-vit", "text_encoder": "org/tiny-bert"}
    (folder / "training_args.json").write_text(json.dumps({**settings, "ablation": "full"}))
    assert publish_main(publish) == 0
    card = (repo / "README.md").read_text()
    top1 = json.loads((folder / "metrics.json").read_text())["top1"]
    assert f"top-1 {100 * top1:.2f}" in card.replace("**", "") and (repo / "model.safetensors").is_file()
