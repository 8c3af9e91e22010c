"""Export the image-only graph of an image classifier to ONNX: `marnet-export` or
`python -m modeling_marnet.export_onnx`.

`pixel_values` (B, 3, H, W) in, `logits` (B, L) out, B dynamic. For MARNet that is the vision tower, the EMA
projection, the whole reverse diffusion (its `num_inference_steps` steps unrolled, the fixed sampler noise folded in
as a constant) and the fusion classifier: what `model(pixel_values).logits` computes in evaluation mode. The text
branch is not in the graph; inference never uses it.

The exporter is `torch.onnx.export` (the `torch.export`-based one). optimum's exporter is not used: optimum-onnx (0.1.0
on PyPI) requires transformers 4.x, and it takes an architecture it does not know only with a hand-written
`OnnxConfig` for it.
"""

import importlib.util
import sys

import numpy as np
import torch
from torch import nn

from marnet_cli.errors import CLIError
from marnet_cli.export_args import ONNX_NAME, PROCESSOR_NAME
from marnet_cli.files import atomic_directory

from .evaluate import load_classifier

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# torch.export specialises a dimension of size 1, so the example batch has 2 images; the check runs another size.
EXPORT_BATCH_SIZE, CHECK_BATCH_SIZE = 2, 3


class ImageLogits(nn.Module):
    """An image classifier as the exported graph: `pixel_values` (B, 3, H, W) -> `logits` (B, L)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values):
        return self.classifier(pixel_values=pixel_values).logits


def check_onnx_packages():
    """Raises unless the exporter's packages (the `onnx` extra) are installed."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise CLIError(
            f"Exporting to ONNX needs {', '.join(ONNX_PACKAGES)}; {', '.join(missing)} not installed. Install them "
            'with: pip install "marnet[onnx]"'
        )


def sample_pixel_values(image_processor, batch_size, seed):
    """(B, 3, H, W) float32 pixel values of random 96x128 RGB images, as `image_processor` prepares photos."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(batch_size)]
    return image_processor(images=images, return_tensors="pt")["pixel_values"].float()


def onnx_runtime_logits(onnx_file, pixel_values):
    """`logits` (B, L) of a plain ONNX Runtime CPU session on `pixel_values` (B, 3, H, W)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]


def export_onnx(classifier, image_processor, output_dir, atol=1e-4):
    """Writes `output_dir` all at once: model.onnx, config.json and preprocessor_config.json.

    The exported file is first run in ONNX Runtime on a batch of another size than the export's; logits further than
    `atol` from PyTorch's are a [`CLIError`], and then nothing is written. The classifier is exported in float32
    (converted in place).

    Returns:
        `float`: the largest |ONNX Runtime - PyTorch| logit difference of that check.
    """
    check_onnx_packages()
    graph = ImageLogits(classifier.float()).eval()
    example = sample_pixel_values(image_processor, EXPORT_BATCH_SIZE, seed=0)
    check = sample_pixel_values(image_processor, CHECK_BATCH_SIZE, seed=1)
    with torch.no_grad():
        # The eager pass also fills MARNet's cache of reverse-process constants: torch.export then reads them as
        # constants (computed while tracing, the step coefficients would be data-dependent values it cannot unroll).
        graph(example)
        expected = graph(check).numpy()  # (CHECK_BATCH_SIZE, L)
    with atomic_directory(output_dir) as staging:
        torch.onnx.export(
            graph,
            (example,),
            str(staging / ONNX_NAME),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch_size")}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        difference = float(np.abs(onnx_runtime_logits(staging / ONNX_NAME, check) - expected).max())
        if not difference <= atol:
            raise CLIError(
                f"The exported graph's logits differ from PyTorch's by up to {difference:.3g} on a batch of "
                f"{CHECK_BATCH_SIZE} images, more than --atol {atol:g}; nothing was written. Report the model's "
                "vision tower: some operator was exported wrongly."
            )
        classifier.config.to_json_file(staging / "config.json")
        image_processor.save_pretrained(staging)
        if not (staging / PROCESSOR_NAME).is_file():  # TimmWrapperImageProcessor's save_pretrained writes nothing
            raise CLIError(
                f"The model's {type(image_processor).__name__} cannot save a {PROCESSOR_NAME}, which the exported "
                "file needs to be fed; nothing was written. Export a marnet-train run folder (it saves a standard "
                "transformers processor for timm towers) or save such a processor next to the model."
            )
    return difference


def run(args):
    """Exports with the options of `marnet_cli.export_args.ExportArguments`; returns the check's logit difference."""
    check_onnx_packages()  # before a model is downloaded
    classifier, image_processor = load_classifier(args, dtype=torch.float32)
    difference = export_onnx(classifier, image_processor, args.output_dir, args.atol)
    print(
        f"Wrote {args.output_dir / ONNX_NAME} (batch dimension dynamic) with its config.json and "
        f"preprocessor_config.json. ONNX Runtime's logits are within {difference:.2g} of PyTorch's on a batch of "
        f"{CHECK_BATCH_SIZE}."
    )
    return difference


def main(argv=None):
    """`python -m modeling_marnet.export_onnx`: the `marnet-export` console script."""
    from marnet_cli.commands import export as export_command

    return export_command(argv)


if __name__ == "__main__":
    sys.exit(main())
