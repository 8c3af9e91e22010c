"""Privileged text features `x_s = F_s(i)`: a pooled text encoder, and a disk cache of its frozen features.

A sentence-transformers model (`modules.json`) is used as its authors configured it: the pooling of its `Pooling`
module, L2 normalisation when it has a `Normalize` module, and the `max_seq_length` / `do_lower_case` of its
`sentence_bert_config.json`, so the features are those of `SentenceTransformer.encode`. Any other encoder defaults
to mean pooling over the attention mask at the tokenizer's maximum length. `--text_pooling` and
`--text_max_length` override either.

A frozen encoder is run once over the training texts; the (N, D) features are stored as safetensors under a key made
of the encoder's weights, the tokenizer, the dataset fingerprint and the encoding settings, so a second run (or
another process) reuses them. Each node computes its own cache (its local main process), so multi-node runs need no
shared filesystem for it.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer
from transformers.utils import cached_file

from marnet_cli.errors import CLIError
from marnet_cli.files import atomic_path

# sentence-transformers pooling modes this module computes -> names of `--text_pooling`.
SENTENCE_TRANSFORMERS_POOLINGS = {
    "mean": "mean",
    "cls": "cls",
    "max": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "lasttoken": "last",
}
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
DEFAULT_POOLING = "mean"


@dataclasses.dataclass(frozen=True)
class TextEncoding:
    """How texts become features: `pooling` of the token states, `max_length` tokens, `lowercase` first (the
    model's `do_lower_case`), `normalize` (unit L2 norm) last."""

    pooling: str = DEFAULT_POOLING
    max_length: int = 512
    normalize: bool = False
    lowercase: bool = False


def _read_json(name_or_path, filename, hub_kwargs):
    path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    return None if path is None else json.loads(Path(path).read_text(encoding="utf-8"))


def sentence_transformers_encoding(name_or_path, **hub_kwargs):
    """{pooling, normalize, max_length, lowercase, subfolder} from a sentence-transformers model's files, or None
    when `name_or_path` has no `modules.json`. Modules other than Transformer, Pooling and Normalize are refused:
    features would differ from the model's."""
    modules = _read_json(name_or_path, "modules.json", hub_kwargs)
    if modules is None:
        return None
    settings = {"normalize": False, "subfolder": ""}
    for module in modules:
        kind, path = module["type"].rsplit(".", 1)[-1], module.get("path", "")
        prefix = f"{path}/" if path else ""
        if kind == "Transformer":
            settings["subfolder"] = path
            transformer = _read_json(name_or_path, f"{prefix}sentence_bert_config.json", hub_kwargs) or {}
            settings["max_length"] = transformer.get("max_seq_length")
            settings["lowercase"] = bool(transformer.get("do_lower_case", False))
        elif kind == "Pooling":
            settings["pooling"] = _pooling_mode(
                _read_json(name_or_path, f"{prefix}config.json", hub_kwargs) or {}, name_or_path
            )
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            raise CLIError(
                f"--text_encoder {name_or_path}: its sentence-transformers module {module['type']!r} is not supported "
                "(only Transformer, Pooling and Normalize), so its features would differ from the model's. Use "
                "another encoder, or compute the features with sentence-transformers."
            )
    return settings


def _pooling_mode(config, name_or_path):
    modes = config.get("pooling_mode") or [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)]
    modes = [modes] if isinstance(modes, str) else list(modes) or ["mean"]
    if len(modes) != 1 or modes[0] not in SENTENCE_TRANSFORMERS_POOLINGS:
        raise CLIError(
            f"--text_encoder {name_or_path}: pooling {modes} is not supported (one of "
            f"{sorted(SENTENCE_TRANSFORMERS_POOLINGS)}); pass --text_pooling to choose one."
        )
    return SENTENCE_TRANSFORMERS_POOLINGS[modes[0]]


def pool_hidden_states(outputs, attention_mask, pooling):
    """(B, T, D) token states -> (B, D): masked mean (or divided by sqrt(length)), masked max, first or last real
    token, or the encoder's pooler output."""
    if pooling == "pooler":
        if getattr(outputs, "pooler_output", None) is None:
            raise CLIError("--text_pooling pooler: this text encoder returns no pooler_output; use mean.")
        return outputs.pooler_output
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)  # (B,), left or right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if pooling == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    lengths = mask.sum(dim=1).clamp(min=1e-9)
    return (hidden * mask).sum(dim=1) / (lengths if pooling == "mean" else lengths.sqrt())


class PooledTextEncoder(nn.Module):
    """A transformers text encoder followed by pooling (and normalisation): (input_ids, attention_mask) (B, T) ->
    (B, D). `encoding` says how its texts are tokenized."""

    def __init__(self, encoder, encoding=TextEncoding()):
        super().__init__()
        self.encoder = encoder
        self.encoding = encoding

    @property
    def hidden_size(self):
        return self.encoder.config.hidden_size

    def forward(self, input_ids, attention_mask):
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        features = pool_hidden_states(outputs, attention_mask, self.encoding.pooling)
        return F.normalize(features, p=2, dim=-1) if self.encoding.normalize else features


def tokenize_texts(tokenizer, texts, encoding):
    """`input_ids` / `attention_mask` (B, T) of `texts` as `encoding` says (lower case, truncation, padding)."""
    texts = [text.lower() for text in texts] if encoding.lowercase else list(texts)
    return tokenizer(texts, padding=True, truncation=True, max_length=encoding.max_length, return_tensors="pt")


def load_text_encoder(name_or_path, pooling=None, max_length=None, trust_remote_code=False):
    """(PooledTextEncoder, tokenizer) from a directory or Hub id, encoding as the model's authors configured it
    (sentence-transformers files), `pooling` / `max_length` overriding it when given."""
    try:
        st_settings = sentence_transformers_encoding(name_or_path) or {}
        load_kwargs = {"trust_remote_code": trust_remote_code}
        if st_settings.get("subfolder"):
            load_kwargs["subfolder"] = st_settings["subfolder"]
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **load_kwargs)
        encoder = AutoModel.from_pretrained(name_or_path, **load_kwargs)
    except (OSError, ValueError) as error:
        raise CLIError(
            f"--text_encoder {name_or_path}: cannot load a tokenizer and model from it ({error}). Give a directory "
            "or Hub id of a BERT-like or sentence-transformers encoder with its tokenizer."
        ) from None
    if not hasattr(encoder.config, "hidden_size"):
        raise CLIError(
            f"--text_encoder {name_or_path}: a {type(encoder).__name__} has no hidden_size; use a "
            "BERT-like text encoder."
        )
    encoding = TextEncoding(
        pooling=pooling or st_settings.get("pooling") or DEFAULT_POOLING,
        max_length=max_length or st_settings.get("max_length") or _tokenizer_max_length(tokenizer, encoder.config),
        normalize=st_settings.get("normalize", False),
        lowercase=st_settings.get("lowercase", False),
    )
    return PooledTextEncoder(encoder, encoding), tokenizer


def _tokenizer_max_length(tokenizer, config):
    """The tokenizer's maximum length, or the encoder's number of positions when the tokenizer sets none."""
    positions = getattr(config, "max_position_embeddings", 512)
    return tokenizer.model_max_length if tokenizer.model_max_length <= positions else positions


class MARNetWithTextEncoder(nn.Module):
    """MARNet and a text encoder trained jointly: the encoder turns `text_input_ids` into `text_embeds` in the
    training step. Only `classifier` is published; the encoder stays a training-time tool."""

    def __init__(self, classifier, text_encoder):
        super().__init__()
        self.classifier = classifier
        self.text_encoder = text_encoder

    def forward(
        self, pixel_values, labels=None, text_input_ids=None, text_attention_mask=None, ingredient_labels=None
    ):
        text_embeds = None
        if text_input_ids is not None:
            text_embeds = self.text_encoder(text_input_ids, text_attention_mask)  # (B, D)
        return self.classifier(
            pixel_values=pixel_values, labels=labels, text_embeds=text_embeds, ingredient_labels=ingredient_labels
        )


def _encoder_digest(text_encoder, tokenizer):
    digest = hashlib.sha256()
    for name, tensor in text_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(json.dumps([type(tokenizer).__name__, len(tokenizer), tokenizer.model_max_length]).encode())
    return digest.hexdigest()


def text_cache_path(cache_dir, text_encoder, tokenizer, dataset, text_column):
    """Cache file for the features of `dataset[text_column]`, keyed by encoder weights + tokenizer, dataset
    fingerprint, column and encoding settings."""
    key = json.dumps(
        {
            "encoder": _encoder_digest(text_encoder, tokenizer),
            "dataset": dataset._fingerprint,
            "column": text_column,
            "encoding": dataclasses.asdict(text_encoder.encoding),
        },
        sort_keys=True,
    )
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def default_text_cache_dir():
    return Path(hub_constants.HF_HOME) / "marnet" / "text_features"


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts, max_length=None, batch_size=64, device="cpu", progress=False):
    """Features of `texts`: (N, D) float32 on CPU, with a progress bar when `progress`. `max_length` overrides the
    encoder's."""
    encoding = text_encoder.encoding
    if max_length is not None:
        encoding = dataclasses.replace(encoding, max_length=max_length)
    text_encoder.eval().to(device)
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="text features", unit="batch", disable=not progress):
        tokens = tokenize_texts(tokenizer, texts[start : start + batch_size], encoding).to(device)
        chunks.append(text_encoder(tokens["input_ids"], tokens["attention_mask"]).float().cpu())
    return torch.cat(chunks)


def cached_text_embeddings(accelerator, text_encoder, tokenizer, dataset, text_column, cache_dir):
    """(N, D) features of the split's texts, computed once per node (by its local main process) and read back by
    every process of the node.

    Returns the features and whether they came from the cache.
    """
    path = text_cache_path(cache_dir, text_encoder, tokenizer, dataset, text_column)
    hit = path.is_file()
    with accelerator.local_main_process_first():
        if not path.is_file() and accelerator.is_local_main_process:
            embeddings = encode_texts(
                text_encoder, tokenizer, list(dataset[text_column]), device=accelerator.device, progress=True
            )
            with atomic_path(path) as partial:
                save_file({"text_embeds": embeddings}, str(partial))
        embeddings = load_file(str(path))["text_embeds"]
    if embeddings.shape[0] != len(dataset):
        raise CLIError(
            f"Text cache {path} holds {embeddings.shape[0]} rows for a split of {len(dataset)}: delete it "
            "and run again."
        )
    return embeddings, hit
