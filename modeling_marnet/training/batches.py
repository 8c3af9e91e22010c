"""Examples and batches for the DataLoader: each row's image decoded (TorchCodec, or PIL where it must), augmented
and resized as uint8 in the workers, batches collated as uint8, and the training step's conversion of a batch into
the model's inputs (the processor's normalisation, once per batch, on the accelerator). See `pixels.py` for how the
image processor's steps are split between the two, and `loaders.py` for the DataLoaders made of them.
"""

import datasets
import torch

from .data_checks import decoded, read_image
from .device_decoding import DeviceDecoding, deferred_image
from .image_decoding import decode_rgb
from .image_paths import ImageFiles
from .pixels import PixelNormalization, per_image_transform
from .text_features import tokenize_texts


class ImagePreprocessing:
    """Decoded uint8 image (3, H, W) of row `index` -> its pixel values (3, h, w): the training augmentation when one
    is given (random per (seed, epoch, row)), then the image processor's per-image steps (`pixels.per_image_transform`:
    uint8 out, normalised per batch by `pixels.PixelNormalization`)."""

    def __init__(self, image_processor, augmentation=None):
        self.augmentation = augmentation
        self.transform = per_image_transform(image_processor)
        self.flatten_transparency = bool(getattr(image_processor, "do_convert_rgb", False))

    def decode(self, value):
        """A dataset image -> uint8 (3, H, W), the pixels the processor would start from (`decode_rgb`)."""
        return decode_rgb(value, self.flatten_transparency)

    def set_epoch(self, epoch):
        """Makes the augmentation of this epoch differ from the others'."""
        if self.augmentation is not None:
            self.augmentation.set_epoch(epoch)

    def __call__(self, image, index):
        if self.augmentation is not None:
            image = self.augmentation(image, index)
        return self.transform(image)


class ImageTextExamples(torch.utils.data.Dataset):
    """Rows of one split as dicts of `pixel_values` (the image decoded by TorchCodec, or PIL where it must, then
    `preprocessing`), `labels` and the privileged text: row `i` of `text_embeds` (N, D) when given, else the raw
    `text` string (for a text encoder trained jointly), else nothing; with `ingredient_column`, the row's ingredients
    as multi-hot `ingredient_labels` (num_ingredients,). With `defer_decoding` (`--gpu_decode`) the image is left for
    the training step to decode: `image` (see `device_decoding.deferred_image`) and its `row`. Images stored as paths
    are read from `image_folders` only (`image_paths.ImageFiles`, with `image_paths.dataset_folders(--dataset)`). An
    image that is refused or cannot be decoded is an error naming `split` and the row (`data_checks.read_image`)."""

    def __init__(
        self,
        dataset,
        image_column,
        label_column,
        preprocessing,
        text_column=None,
        text_embeds=None,
        defer_decoding=False,
        split=None,
        image_folders=(),
        ingredient_column=None,
        num_ingredients=0,
    ):
        optional = [column for column in (text_column, ingredient_column) if column is not None]
        self.dataset = undecoded_images(dataset.select_columns([image_column, label_column, *optional]), image_column)
        self.image_column = image_column
        self.label_column = label_column
        self.text_column = text_column
        self.ingredient_column = ingredient_column
        self.num_ingredients = num_ingredients
        self.text_embeds = text_embeds
        self.preprocessing = preprocessing
        self.defer_decoding = defer_decoding
        self.split = split
        self.image_files = ImageFiles(image_folders)

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        """Makes the augmentation of this epoch differ from the others'."""
        self.preprocessing.set_epoch(epoch)

    def __getitem__(self, index):
        row = self.dataset[index]
        value = read_image(self.image_files.embedded, row[self.image_column], self.split, index)
        decode = lambda value: decoded(self.preprocessing.decode, value, self.split, index)
        if self.defer_decoding:
            image = read_image(lambda value: deferred_image(value, decode), value, self.split, index)
            example = {"image": image, "row": index}
        else:
            example = {"pixel_values": self.preprocessing(decode(value), index)}
        example["labels"] = row[self.label_column]
        if self.text_embeds is not None:
            example["text_embeds"] = self.text_embeds[index]
        elif self.text_column is not None:
            example["text"] = row[self.text_column]
        if self.ingredient_column is not None:
            example["ingredient_labels"] = torch.zeros(self.num_ingredients)  # (K,) multi-hot
            example["ingredient_labels"][row[self.ingredient_column]] = 1.0
        return example


def undecoded_images(dataset, image_column):
    """`dataset` with its `datasets.Image` column left encoded ({"bytes", "path"}), for `decode_rgb`."""
    if isinstance(dataset.features[image_column], datasets.Image):
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


class MARNetCollator:
    """Examples -> a batch of `pixel_values` (B, C, H, W; uint8 until the training step normalises them), `labels`
    (B,), `ingredient_labels` (B, K) when the examples carry them and, when they carry text, `text_embeds` (B, D) or
    the text tokenized as `encoding` says (`text_input_ids`, `text_attention_mask`: (B, T)). Deferred images
    (`--gpu_decode`) stay a list, with their `rows`."""

    def __init__(self, tokenizer=None, encoding=None):
        self.tokenizer = tokenizer
        self.encoding = encoding

    def __call__(self, examples):
        batch = {"labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long)}
        if "pixel_values" in examples[0]:
            # Stacked as (B, h, w, 3): the images come out of decoding and resizing channels-last in memory, so
            # this is a plain copy (a (B, 3, h, w) stack transposes every image). Normalising makes it contiguous.
            images = [example["pixel_values"].permute(1, 2, 0) for example in examples]
            batch["pixel_values"] = torch.stack(images).permute(0, 3, 1, 2)  # (B, 3, h, w)
        else:
            batch["images"] = [example["image"] for example in examples]
            batch["rows"] = [example["row"] for example in examples]
        if "ingredient_labels" in examples[0]:
            batch["ingredient_labels"] = torch.stack([example["ingredient_labels"] for example in examples])
        if "text_embeds" in examples[0]:
            batch["text_embeds"] = torch.stack([example["text_embeds"] for example in examples])
        elif "text" in examples[0] and self.tokenizer is not None:
            tokens = tokenize_texts(self.tokenizer, [example["text"] for example in examples], self.encoding)
            batch["text_input_ids"] = tokens["input_ids"]
            batch["text_attention_mask"] = tokens["attention_mask"]
        return batch


def model_inputs(image_processor, preprocessing, decode_device=None):
    """The training step's `batch -> model inputs`: uint8 pixel values normalised as the processor does, on the
    batch's device; with `decode_device` (`--gpu_decode`), the deferred images decoded and preprocessed there first."""
    normalization = PixelNormalization(image_processor)
    if decode_device is None:
        return normalization
    decoding = DeviceDecoding(preprocessing, decode_device)
    return lambda batch: normalization(decoding(batch))
