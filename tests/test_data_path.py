"""The uint8 data path: decoding, the image processor split between workers and the training step, augmentation with
persistent workers, the deferred (`--gpu_decode`) path, loader defaults, and the fast image processor of saved
folders.

The contract is the image processor on the image as `datasets` decodes it (PIL, EXIF orientation applied) converted
to RGB: the new path must give the same pixel values within one 8-bit level, and the same decoded pixels exactly.
"""

import io

import datasets
import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import torchvision.io
from torch.utils.data import DataLoader
from torchcodec.decoders import decode_png
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    ConvNextImageProcessor,
    ViTImageProcessor,
    ViTImageProcessorPil,
    pipeline,
)
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_transforms import convert_to_rgb

from marnet_cli.errors import CLIError
from modeling_marnet import MARNetForImageClassification
from modeling_marnet.training.augmentation import RandomAugmentation
from modeling_marnet.training.batches import ImagePreprocessing, ImageTextExamples, MARNetCollator, model_inputs
from modeling_marnet.training.device_decoding import DeviceDecoding, check_gpu_decode
from modeling_marnet.training.image_decoding import decode_rgb, decode_with_torchcodec, torchcodec_decoder
from modeling_marnet.training.image_paths import ImageFiles
from modeling_marnet.training.image_processing import standard_image_processor
from modeling_marnet.training.loaders import MAX_DEFAULT_WORKERS, default_num_workers
from tiny_marnet import IMAGE_SIZE, tiny_config
from train_fixtures import (
    module_command,
    run_command,
    save_dataset,
    save_timm_tower,
    save_vision_tower,
    tiny_model_args,
)


def encode(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def exif_rotated(image, image_format="JPEG", **options):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    return encode(image, image_format, exif=exif.tobytes(), **options)


def with_alpha(image):
    rgba = image.convert("RGBA")
    rgba.putalpha(PIL.Image.linear_gradient("L").resize(image.size))
    return rgba


def palette_with_transparency(image):
    palette = image.convert("P", palette=PIL.Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return encode(palette, "PNG")


def colour_key(image):
    """An RGB PNG whose tRNS chunk marks the colour of the top-left pixel transparent."""
    return encode(image, "PNG", transparency=image.getpixel((0, 0)))


def sixteen_bit(image):
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return encode(PIL.Image.fromarray(grey), "PNG")  # mode I;16


ENCODINGS = {
    "jpeg RGB": lambda image: encode(image, "JPEG", quality=90),
    "jpeg L": lambda image: encode(image.convert("L"), "JPEG", quality=90),
    "jpeg CMYK": lambda image: encode(image.convert("CMYK"), "JPEG", quality=90),
    "jpeg EXIF-rotated": lambda image: exif_rotated(image, quality=90),
    "jpeg progressive": lambda image: encode(image, "JPEG", quality=90, progressive=True),
    "png RGB": lambda image: encode(image, "PNG"),
    "png L": lambda image: encode(image.convert("L"), "PNG"),
    "png LA": lambda image: encode(with_alpha(image).convert("LA"), "PNG"),
    "png RGBA": lambda image: encode(with_alpha(image), "PNG"),
    "png P": lambda image: encode(image.convert("P", palette=PIL.Image.Palette.ADAPTIVE), "PNG"),
    "png EXIF-rotated": lambda image: exif_rotated(image, "PNG"),
    "png P transparent": palette_with_transparency,
    "png RGB colour key": colour_key,
    "png 16-bit": sixteen_bit,
    "webp": lambda image: encode(image, "WEBP", quality=90),
    "webp RGBA": lambda image: encode(with_alpha(image), "WEBP", quality=90),
    "webp lossless": lambda image: encode(image, "WEBP", lossless=True),
    "webp EXIF-rotated": lambda image: exif_rotated(image, "WEBP", quality=90),
    "webp animated": lambda image: encode(image, "WEBP", save_all=True, append_images=[image.rotate(180)]),
    "gif": lambda image: encode(image.convert("P"), "GIF"),
    "gif transparent": lambda image: encode(image.convert("P"), "GIF", transparency=0),
    "bmp": lambda image: encode(image, "BMP"),
}
# The encodings that training/image_decoding.py leaves to PIL; TorchCodec decodes the others.
DECODED_BY_PIL = {
    "png P transparent",  # tRNS: the processor composites what PIL's info["transparency"] names on white
    "png RGB colour key",
    "png 16-bit",  # TorchCodec scales 16-bit samples to 8 bits otherwise than PIL
    "webp animated",  # TorchCodec decodes every frame, PIL the first
    "gif",  # formats whose size pixel_limit.py does not read from the header: PIL checks its own limit
    "gif transparent",
    "bmp",
}
# Of those, the ones TorchCodec decodes to other pixels, with `flatten_transparency` (as processors convert them).
TORCHCODEC_DIFFERS = ("png P transparent", "png RGB colour key", "png 16-bit")


@pytest.fixture(scope="module")
def photo():
    """A real photo (scikit-image's coffee cup), 96 x 72."""
    return PIL.Image.fromarray(skimage.data.coffee()).resize((96, 72), PIL.Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def encoded(photo):
    return {name: make(photo) for name, make in ENCODINGS.items()}


@pytest.fixture(scope="module")
def split(encoded):
    """A split with one row per encoding, images kept encoded as `datasets` stores them."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(ENCODINGS))})
    images = [{"bytes": data, "path": None} for data in encoded.values()]
    return datasets.Dataset.from_dict({"image": images, "label": list(range(len(images)))}, features=features)


def pil_reference(data):
    """What the image processor sees at inference: the image as `datasets` decodes it, in RGB."""
    return datasets.Image().decode_example({"bytes": data, "path": None}).convert("RGB")


def as_tensor(pixels):
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # (3, H, W)


def flattened_reference(data):
    """`pil_reference` with transparent palette or colour-key pixels white, as processors with `do_convert_rgb`
    composite them."""
    return as_tensor(convert_to_rgb(pil_reference(data), return_numpy=True))


@pytest.mark.parametrize("name", ENCODINGS)
def test_decoded_pixels_are_exactly_those_pil_gives(name, encoded):
    data = encoded[name]
    for flatten_transparency, expected in ((False, as_tensor(pil_reference(data))), (True, flattened_reference(data))):
        decoded = decode_rgb({"bytes": data, "path": None}, flatten_transparency)
        assert decoded.dtype == torch.uint8 and decoded.shape == expected.shape
        levels = int((decoded.int() - expected.int()).abs().max())
        assert levels == 0, f"{name}, flatten_transparency={flatten_transparency}: {levels} levels from PIL's pixels"


@pytest.mark.parametrize("name", ENCODINGS)
def test_each_encoding_goes_to_the_decoder_of_the_routing(name, encoded):
    """With the test above: what goes to TorchCodec gives PIL's pixels, so the routing may move nothing else to it
    without that test failing."""
    decoder = torchcodec_decoder(encoded[name])
    assert (decoder is None) == (name in DECODED_BY_PIL), f"{name} goes to {'PIL' if decoder is None else decoder}"


@pytest.mark.parametrize("name", TORCHCODEC_DIFFERS)
def test_what_pil_decodes_torchcodec_would_decode_otherwise(name, encoded):
    """Why these stay on PIL; when a TorchCodec release gives PIL's pixels, this fails and they may move to it."""
    differs = decode_with_torchcodec(decode_png, encoded[name]) != flattened_reference(encoded[name])
    assert differs.any()


def test_torchvisions_deprecated_decoders_fail_the_suite(encoded):
    """setup.cfg's filterwarnings turns torchvision's deprecation of its decoders into an error: this fails when
    torchvision words it otherwise and that entry stops matching."""
    with pytest.raises(DeprecationWarning, match="decoding and encoding capabilities of TorchVision are deprecated"):
        torchvision.io.decode_jpeg(torch.frombuffer(bytearray(encoded["jpeg RGB"]), dtype=torch.uint8))


def test_images_stored_as_paths_are_read_from_disk(encoded, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded["jpeg EXIF-rotated"])
    decoded = decode_rgb(ImageFiles([tmp_path]).embedded({"bytes": None, "path": str(path)}))
    assert torch.equal(decoded, decode_rgb({"bytes": encoded["jpeg EXIF-rotated"], "path": None}))
    assert decoded.shape == (3, 96, 72)  # rotated: 72 wide, 96 high


def timm_tower_processor(directory):
    return standard_image_processor(AutoImageProcessor.from_pretrained(save_timm_tower(directory, image_size=40)))


PROCESSORS = {
    "vit (resize to 48x48, bilinear)": lambda tmp: ViTImageProcessor(size={"height": 48, "width": 48}),
    "bit (shortest edge 56, crop 48, bicubic)": lambda tmp: BitImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 48, "width": 48}
    ),
    "timm tower (BitImageProcessor from timm's data config)": timm_tower_processor,
    "convnext (own _preprocess: run whole)": lambda tmp: ConvNextImageProcessor(size={"shortest_edge": 48}),
    "PIL backend (run whole)": lambda tmp: ViTImageProcessorPil(size={"height": 48, "width": 48}),
}


@pytest.mark.parametrize("processor_name", PROCESSORS)
def test_evaluation_pixel_values_are_the_image_processors(processor_name, split, encoded, tmp_path):
    processor = PROCESSORS[processor_name](tmp_path)
    preprocessing = ImagePreprocessing(processor)
    examples = ImageTextExamples(split, "image", "label", preprocessing)
    batch = MARNetCollator()([examples[index] for index in range(len(examples))])
    runs_whole = isinstance(processor, (PilBackend, ConvNextImageProcessor))
    assert batch["pixel_values"].dtype == (torch.float32 if runs_whole else torch.uint8)  # uint8 from the workers

    pixel_values = model_inputs(processor, preprocessing)(batch)["pixel_values"]  # (B, 3, h, w)
    expected = processor(images=[pil_reference(data) for data in encoded.values()], return_tensors="pt")
    expected = expected["pixel_values"]
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == expected.shape
    assert pixel_values.is_contiguous()  # laid out as the processor gives them
    one_level = torch.tensor(processor.rescale_factor) / torch.tensor(processor.image_std)  # (3,)
    difference = (pixel_values - expected).abs().amax(dim=(2, 3))  # (B, 3)
    worst = {name: round(float(value), 4) for name, value in zip(ENCODINGS, (difference / one_level).amax(dim=1))}
    assert (difference <= one_level * 1.001).all(), f"differences in 8-bit levels: {worst}"


def augmenting_examples(split, seed=0):
    processor = ViTImageProcessor(size={"height": 48, "width": 48})
    augmentation = RandomAugmentation.from_options((48, 48), "randaugment", 0.4, seed)
    return ImageTextExamples(split, "image", "label", ImagePreprocessing(processor, augmentation))


def epoch_batches(loader, examples, epoch):
    examples.set_epoch(epoch)
    return [batch["pixel_values"] for batch in loader]


def test_augmentation_depends_on_seed_epoch_and_row_also_in_persistent_workers(split):
    examples = augmenting_examples(split)
    in_process = DataLoader(examples, batch_size=5, collate_fn=MARNetCollator())
    workers = DataLoader(examples, batch_size=5, collate_fn=MARNetCollator(), num_workers=2, persistent_workers=True)
    for epoch in (0, 1, 0):  # the workers outlive epochs: set_epoch must reach them
        torch.manual_seed(epoch + 7)  # the global RNG does not matter
        expected = epoch_batches(in_process, examples, epoch)
        for got, want in zip(epoch_batches(workers, examples, epoch), expected, strict=True):
            assert got.dtype == torch.uint8 and torch.equal(got, want)
    first, second = (epoch_batches(in_process, examples, epoch)[0] for epoch in (0, 1))
    assert not torch.equal(first, second)
    other_seed = augmenting_examples(split, seed=1)
    other_loader = DataLoader(other_seed, batch_size=5, collate_fn=MARNetCollator())
    assert not torch.equal(first, epoch_batches(other_loader, other_seed, 0)[0])


def test_deferred_decoding_gives_the_workers_pixels(split):
    """`--gpu_decode`'s path, run on CPU: the training step decodes the JPEGs the workers left encoded and
    preprocesses every image as the workers would have."""
    examples = augmenting_examples(split)
    deferred = ImageTextExamples(split, "image", "label", examples.preprocessing, defer_decoding=True)
    rows = range(len(examples))
    expected = MARNetCollator()([examples[row] for row in rows])
    batch = MARNetCollator()([deferred[row] for row in rows])
    left_encoded = [name for name, image in zip(ENCODINGS, batch["images"]) if isinstance(image, np.ndarray)]
    assert left_encoded == ["jpeg RGB", "jpeg L", "jpeg progressive"]  # CMYK, EXIF-rotated: decoded by the workers
    decoded = DeviceDecoding(examples.preprocessing, "cpu")(batch)
    assert "images" not in decoded and torch.equal(decoded["labels"], expected["labels"])
    assert torch.equal(decoded["pixel_values"], expected["pixel_values"])


def test_gpu_decode_refuses_without_cuda_or_with_a_processor_that_runs_whole():
    with pytest.raises(CLIError, match="--gpu_decode decodes JPEGs with nvJPEG on the training process's CUDA GPU"):
        check_gpu_decode(torch.device("cpu"), ViTImageProcessor())
    with pytest.raises(CLIError, match="ConvNextImageProcessor is not one. Drop --gpu_decode"):
        check_gpu_decode(torch.device("cuda"), ConvNextImageProcessor())


def test_without_torchcodec_pil_decodes_the_same_pixels_and_gpu_decode_refuses(encoded, monkeypatch, caplog):
    """A torch without the CUDA runtime TorchCodec's wheel links (or no TorchCodec): PIL decodes, one warning."""
    from modeling_marnet.training import image_decoding

    monkeypatch.setattr(image_decoding, "TORCHCODEC_UNAVAILABLE", "OSError: libcudart.so.13: cannot open")
    image_decoding._warn_torchcodec_unavailable.cache_clear()
    for name, data in encoded.items():
        expected = torch.from_numpy(np.array(pil_reference(data))).permute(2, 0, 1)
        assert torch.equal(decode_rgb({"bytes": data, "path": None}), expected), name
    warnings = [r.getMessage() for r in caplog.records if "TorchCodec could not be loaded" in r.getMessage()]
    assert len(warnings) == 1 and "libcudart.so.13" in warnings[0] and "CPU wheel" in warnings[0]
    with pytest.raises(CLIError, match=r"TorchCodec's nvJPEG, which could not be loaded \(OSError: libcudart"):
        check_gpu_decode(torch.device("cuda"), ViTImageProcessor())
    image_decoding._warn_torchcodec_unavailable.cache_clear()


def test_default_workers_share_the_cores_among_the_processes_of_the_node(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(40)))
    assert default_num_workers(1) == MAX_DEFAULT_WORKERS
    assert default_num_workers(4) == 10
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_num_workers(1) == 1 and default_num_workers(2) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_marnet_train_gpu_decode_refuses_without_cuda(tmp_path):
    dataset, tower = save_dataset(tmp_path / "dataset"), save_vision_tower(tmp_path / "tower")
    refused = run_command(
        module_command(
            "modeling_marnet.train",
            *("--dataset", dataset, "--vision-model", tower, "--ablation", "baseline", "--report-to", "none"),
            *("--max-steps", 2, "--output-dir", tmp_path / "run", "--gpu_decode", *tiny_model_args()),
        )
    )
    assert refused.returncode == 1
    assert "error: --gpu_decode decodes JPEGs with nvJPEG" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_saved_folder_loads_the_fast_image_processor_and_the_pipeline_takes_it(tmp_path, photo):
    torch.manual_seed(0)
    MARNetForImageClassification(tiny_config("baseline")).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(tmp_path)
    fast = AutoImageProcessor.from_pretrained(tmp_path, use_fast=True)
    slow = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert isinstance(fast, TorchvisionBackend) and isinstance(slow, PilBackend)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), TorchvisionBackend)  # the default already
    fast_scores, slow_scores = (
        pipeline("image-classification", model=str(tmp_path), image_processor=processor, top_k=None)(photo)
        for processor in (fast, slow)
    )
    assert [score["label"] for score in fast_scores] == [score["label"] for score in slow_scores]
    for got, want in zip(fast_scores, slow_scores):
        assert got["score"] == pytest.approx(want["score"], abs=0.02)
