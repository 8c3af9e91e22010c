"""What `accuracy.py` compares: each row of its tables, as the marnet-train options that make it.

The model's names come from the package (`FUSION_MODES`, `PAPER_LITERAL`), so a row always means what the package
means. The options of a row are part of every run's recorded command: changing them (even their order) trains the
row again instead of reusing its finished runs.
"""

from dataclasses import dataclass, field

from modeling_marnet.configuration_marnet import FUSION_MODES, PAPER_LITERAL


def marnet_config(*changes):
    """marnet-train options setting config fields: marnet_config("a=1", "b=2") -> ["--marnet-config", "a=1", ...]."""
    return [option for change in changes for option in ("--marnet-config", change)]


# The extensions that are off in the paper and in our defaults (the text classifier and its distillation).
EXTENSIONS_OFF = marnet_config("text_classification_weight=0", "distillation_weight=0")
# The paper read literally where it is open (modeling_marnet.PAPER_LITERAL), as marnet-train options.
PAPER_LITERAL_OPTIONS = [
    *marnet_config(*(f"{field}={value}" for field, value in PAPER_LITERAL.items())),
    *EXTENSIONS_OFF,
]
# Our validated defaults, spelled out so the rows do not depend on the package's default values.
MARNET = [
    "--ablation",
    "full",
    *marnet_config(
        "visual_features=tower",
        "reconstruction_training=sample",
        "diffusion_timesteps=inference",
        "text_normalization=unit_rms",
        "denoiser_hidden_size=256",
        "alignment_loss_weight=1.0",
    ),
    *EXTENSIONS_OFF,
]
# ITA's weight before it was raised to 1.0: the stage-1 weight of the Table 1 methods and of the paper rows.
EARLIER_ALIGNMENT_WEIGHT = "alignment_loss_weight=0.1"
# Alignment-loss weights each Table 1 method also tries (typical loss at initialisation: SWD ~3e-4, CDD ~0,
# SSAN ~0.6, ITA ~9, TEAM ~18, SDM ~25).
ALIGNMENT_WEIGHTS = {"sdm": (0.01, 0.03), "swd": (30, 300), "cdd": (1.0, 3.0), "ssan": (1.0, 3.0), "team": (0.05, 0.3)}
TEXT_WEIGHTS_OFF = [*marnet_config("alignment_loss_weight=0", "reconstruction_loss_weight=0"), *EXTENSIONS_OFF]


@dataclass
class Row:
    """One line of the table: the marnet-train options that make it (or the timm anchor), and whether it reads the
    privileged text (then it is trained and tuned on each proxy, and its loss weights are searched too)."""

    options: list = field(default_factory=list)
    uses_text: bool = True
    trainer: str = "marnet"  # "marnet" (python -m modeling_marnet.train) or "timm" (benchmarks/timm_anchor.py)
    weight_grid: list = field(default_factory=lambda: [[EARLIER_ALIGNMENT_WEIGHT], ["reconstruction_loss_weight=0.1"]])


def _paper(*changes):
    """The paper-literal full MARNet with `changes` (marnet-config FIELD=VALUE) applied: one change at a time."""
    return Row(["--ablation", "full", *PAPER_LITERAL_OPTIONS, *marnet_config(EARLIER_ALIGNMENT_WEIGHT, *changes)])


ROWS = {
    "baseline": Row(["--ablation", "baseline"], uses_text=False),
    # The simplest competitor on the same privileged data: the baseline predicting the dataset's `ingredients`
    # column too (multi-label BCE on the tower's feature; no text). For datasets with that column.
    "ingredients": Row(["--ablation", "ingredients"], uses_text=False),
    "timm": Row(uses_text=False, trainer="timm"),
    "no-text": Row([*MARNET, *TEXT_WEIGHTS_OFF], uses_text=False),
    "marnet": Row(MARNET),
    # Opt-in extensions on top of `marnet`.
    "marnet+distill": Row(
        [*MARNET, *marnet_config("text_classification_weight=1", "distillation_weight=1")],
        weight_grid=[["distillation_weight=3"], [EARLIER_ALIGNMENT_WEIGHT]],
    ),
    # The earlier default ITA weight (the `marnet` rows of the result files written before it was raised to 1.0;
    # in the files that chose it, `marnet+alignment-1` is today's `marnet`).
    "marnet+alignment-0.1": Row([*MARNET, *marnet_config(EARLIER_ALIGNMENT_WEIGHT)]),
    "marnet+class": Row([*MARNET, *marnet_config("alignment_targets=class")]),
    "marnet+warmup": Row([*MARNET, "--auxiliary-warmup-ratio", "0.3"]),
    # The recipe without gradient clipping (`--max-grad-norm 0`; the default clips at 1.0, as Trainer does).
    "baseline+no-clip": Row(["--ablation", "baseline", "--max-grad-norm", "0"], uses_text=False),
    "marnet+no-clip": Row([*MARNET, "--max-grad-norm", "0"]),
    # Cheaper training of the CDR branch: gradients through the last reverse step only, through none (the
    # classifiers train on a detached sample), or the one-step x0 prediction in place of the sample.
    "marnet+backprop1": Row([*MARNET, *marnet_config("reconstruction_backprop_steps=1")]),
    "marnet+detached-sample": Row([*MARNET, *marnet_config("reconstruction_backprop_steps=0")]),
    "marnet+one-step-cdr": Row([*MARNET, *marnet_config("reconstruction_training=one_step")]),
    # The earlier default denoiser width, with the ITA weight of its time: the `marnet` rows of the result files
    # written before the denoiser was narrowed.
    "marnet+denoiser-1024": Row([*MARNET, *marnet_config("denoiser_hidden_size=1024", EARLIER_ALIGNMENT_WEIGHT)]),
    # The alignment methods of the paper's Table 1 in place of ITA; their losses differ in scale by orders of
    # magnitude, so each searches its own alignment weight (stage 1 uses 0.1). marnet-train gives pooled
    # text features only, so TEAM runs as "TEAM, pooled text" (docs/alignment_methods.md).
    **{
        f"marnet-{method}" + ("-pooled-text" if method == "team" else ""): Row(
            [*MARNET, *marnet_config(f"alignment={method}", EARLIER_ALIGNMENT_WEIGHT)],
            weight_grid=[[f"alignment_loss_weight={w}"] for w in weights],
        )
        for method, weights in ALIGNMENT_WEIGHTS.items()
    },
    "paper": _paper(),
    # One open choice changed at a time from the paper-literal model.
    "paper+tower-features": _paper("visual_features=tower"),
    "paper+sampled-cdr": _paper("reconstruction_training=sample"),
    "paper+unit-rms-text": _paper("text_normalization=unit_rms"),
    "paper+inference-timesteps": _paper("diffusion_timesteps=inference"),
    "paper+class-targets": _paper("alignment_targets=class"),
    "paper+text-classifier": _paper("text_classification_weight=1"),
    "paper+distillation": _paper("text_classification_weight=1", "distillation_weight=1"),
    # The paper's Table 2 rows, with this package's defaults.
    "ema": Row(["--ablation", "ema"]),
    "mlp": Row(["--ablation", "mlp"]),
    "cdr": Row(["--ablation", "cdr"]),
    **{f"full-{mode}": Row(["--ablation", "full", "--fusion-mode", mode]) for mode in FUSION_MODES},
}
BASELINE_ROW = "baseline"
DEFAULT_ROWS = ["baseline", "timm", "no-text", "marnet", "marnet+distill", "paper"]
