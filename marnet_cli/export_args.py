"""Options of `marnet-export`, with the names `marnet-eval` uses for the same things."""

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .files import refuse_dangling_symlink
from .options import MARNetArgumentParser, config_option, model_option, option, require, trust_remote_code_option

ONNX_NAME = "model.onnx"
PROCESSOR_NAME = "preprocessor_config.json"
# What an export folder holds; a folder with anything else (a run folder, say) is never replaced.
EXPORT_FILES = (ONNX_NAME, "config.json", PROCESSOR_NAME)

DESCRIPTION = """\
Export the image-only graph of an image classifier (a MARNet run folder, one of its checkpoints, or a Hub id) to
ONNX, with a dynamic batch dimension. The output folder holds model.onnx (input `pixel_values`, output `logits`),
config.json (labels in `id2label`) and preprocessor_config.json. Before anything is written, the exported file is
run in ONNX Runtime on a batch of another size than the export's and its logits compared with PyTorch's.
Needs the `onnx` extra: pip install "marnet[onnx]".

example:
  marnet-export --model_name_or_path runs/vireo --output_dir runs/vireo-onnx
"""


@dataclass
class ExportArguments:
    """Every option of `marnet-export`; `__post_init__` checks them and raises [`UsageError`] for bad values."""

    config: str | None = config_option()
    model_name_or_path: str | None = model_option()
    output_dir: Path | None = option(
        help="Folder to write; an earlier export there is replaced all at once, nothing else is."
    )
    num_inference_steps: int | None = option(
        help="Override MARNet's reverse diffusion steps (the exported graph has them unrolled)."
    )
    atol: float = option(1e-4, help="Largest |ONNX Runtime - PyTorch| logit difference accepted.")
    trust_remote_code: bool = trust_remote_code_option()

    def __post_init__(self):
        require(self, "model_name_or_path", "output_dir")
        refuse_dangling_symlink(self.output_dir, "--output_dir")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise UsageError(f"--output_dir {self.output_dir} is a file: choose a folder path.")
        existing = {path.name for path in self.output_dir.iterdir()} if self.output_dir.is_dir() else set()
        others = sorted(existing - set(EXPORT_FILES))
        if others:
            raise UsageError(
                f"--output_dir {self.output_dir} holds {others[:3]}, which no export writes: marnet-export replaces "
                "the whole folder. Choose a new folder or an earlier export's."
            )
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise UsageError(f"--num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        if not self.atol > 0:
            raise UsageError(f"--atol must be > 0, got {self.atol}.")


def parse_export_args(argv=None):
    """The [`ExportArguments`] of `argv` (default: the command line)."""
    return MARNetArgumentParser(ExportArguments, prog="marnet-export", description=DESCRIPTION).parse(argv)
