"""Options of `marnet-eval`, with the names `marnet-train` uses for the same things."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import UsageError
from .options import MARNetArgumentParser, config_option, model_option, option, require, trust_remote_code_option

DESCRIPTION = """\
Top-1/top-5 accuracy and loss of an image classifier (a MARNet run folder or any other) on dataset splits, printed
as JSON in the layout of marnet-train's metrics.json. Run it plainly, or with
`accelerate launch -m modeling_marnet.evaluate ...` on several devices.

example:
  marnet-eval --model_name_or_path runs/vireo --dataset_name datasets/vireo-food172 --split validation test
  marnet-eval --model runs/vireo --dataset datasets/vireo-food172 --corruption gaussian_noise --severity 3
"""


@dataclass
class EvalArguments:
    """Every option of `marnet-eval`; `__post_init__` checks them and raises [`UsageError`] for bad values."""

    config: str | None = config_option()
    model_name_or_path: str | None = model_option()
    dataset: str | None = option(
        aliases=["--dataset_name"], help="Hub id, `save_to_disk` directory or Parquet file(s)."
    )
    split: list[str] | None = option(
        action="extend", help="Split(s) to evaluate, the first one reported on top (default: test)."
    )
    image_column: str = option("image", aliases=["--image_column_name"])
    label_column: str = option("label", aliases=["--label_column_name"])
    max_eval_samples: int | None = option(help="Keep the first N rows of each split.")
    per_device_eval_batch_size: int = option(64, aliases=["--batch_size"])
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(
        help="Default: Accelerate's config or `accelerate launch --mixed_precision`."
    )
    num_inference_steps: int | None = option(help="Override MARNet's reverse diffusion steps.")
    corruption: str | None = option(
        help="Corrupt every image after decoding and before the image processor: gaussian_noise, shot_noise, "
        "impulse_noise, gaussian_blur, defocus_blur, pixelate, jpeg_compression, contrast or occlusion "
        "(ImageNet-C style, deterministic per image; docs/robustness.md)."
    )
    severity: int | None = option(help="Severity of --corruption, 1 (mild) to 5 (severe); required with it.")
    trust_remote_code: bool = trust_remote_code_option()
    metrics_file: str | None = option(aliases=["--output"], help="Also write the metrics JSON to this file.")

    def __post_init__(self):
        require(self, "model_name_or_path", "dataset")
        self.split = self.split or ["test"]
        if self.metrics_file is not None and Path(self.metrics_file).is_dir():
            raise UsageError(
                f"--metrics_file {self.metrics_file} is a directory: give the path of a file to write (e.g. "
                f"{Path(self.metrics_file) / 'metrics.json'})."
            )
        for name in ("per_device_eval_batch_size", "max_eval_samples", "num_inference_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be >= 1, got {value}.")
        if (self.corruption is None) != (self.severity is None):
            raise UsageError(
                "--corruption and --severity go together: give both (e.g. --corruption gaussian_noise --severity 3) "
                f"or neither; got --corruption {self.corruption} --severity {self.severity}."
            )
        if self.severity is not None and self.severity not in range(1, 6):
            raise UsageError(f"--severity must be an integer in 1-5, got {self.severity}.")
        if self.corruption is not None:
            from modeling_marnet.corruptions import check_corruption  # torch: only once the options are parsed

            try:
                check_corruption(self.corruption, self.severity)
            except ValueError as error:
                raise UsageError(f"--corruption: {error}") from None


def parse_eval_args(argv=None):
    """The [`EvalArguments`] of `argv` (default: the command line)."""
    return MARNetArgumentParser(EvalArguments, prog="marnet-eval", description=DESCRIPTION).parse(argv)
