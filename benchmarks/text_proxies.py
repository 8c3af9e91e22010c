"""Privileged-text variants of a proxy dataset, and how much of the label its text gives away.

`scrubbed` removes every word that names the image's class (the class name's words, their singular/plural, and the
synonyms below) from the text, so that a gain from the text cannot be label leakage through it. The leakage left is
measured, not assumed: `text_probe_accuracy` trains a linear classifier on the frozen text features alone.
"""

import re

# Synonyms of the OpenClipart top-level categories (besides the words of the name itself), removed with them.
OPENCLIPART_SYNONYMS = {
    "animals": ["fauna", "creature", "creatures", "wildlife"],
    "buildings": ["architecture", "edifice"],
    "computer": ["computers", "computing", "pc"],
    "decorations": ["decorative", "ornament", "ornaments", "decor"],
    "education": ["educational"],
    "electronics": ["electronic"],
    "food": ["foods", "foodstuff"],
    "geography": ["geographic", "geographical"],
    "people": ["person", "persons", "human", "humans"],
    "plants": ["flora"],
    "recreation": ["recreational"],
    "science": ["scientific"],
    "signs_and_symbols": ["signage"],
    "transportation": ["transport", "transports"],
}
CONNECTIVES = {"and", "of", "the"}


def class_terms(class_name, synonyms=()):
    """Lower-case words that name `class_name`: its words (`_` and spaces split; connectives dropped), each with and
    without a final 's', and the synonyms."""
    words = {word for word in re.split(r"[_\s]+", class_name.lower()) if word and word not in CONNECTIVES}
    forms = set(synonyms)
    for word in words:
        forms |= {word, word[:-1] if word.endswith("s") else word + "s"}
    return sorted(forms)


def scrub_text(text, terms):
    """`text` with every whole-word occurrence of `terms` (case-insensitive; `_` and `-` count as word breaks)
    removed, and the separators left behind tidied."""
    if not terms:
        return text
    pattern = (
        r"(?<![^\W_])(?:" + "|".join(re.escape(term) for term in sorted(terms, key=len, reverse=True)) + r")(?![^\W_])"
    )
    scrubbed = re.sub(pattern, "", text, flags=re.IGNORECASE)
    scrubbed = re.sub(r"\s*,(\s*,)+", ",", scrubbed)  # "a, , b" -> "a, b"
    scrubbed = re.sub(r"([.;:])\s*,", r"\1", scrubbed)  # "title. , b" -> "title. b"
    scrubbed = re.sub(r"[ \t]{2,}", " ", scrubbed)
    return scrubbed.strip(" ,.")


def scrub_dataset(dataset_dict, text_column="text", label_column="label", synonyms=None):
    """A copy of `dataset_dict` whose texts never name their row's class (see `class_terms`)."""
    names = dataset_dict[next(iter(dataset_dict))].features[label_column].names
    synonyms = OPENCLIPART_SYNONYMS if synonyms is None else synonyms
    terms = [class_terms(name, synonyms.get(name, ())) for name in names]

    def scrub(batch):
        return {
            text_column: [
                scrub_text(text, terms[label]) for text, label in zip(batch[text_column], batch[label_column])
            ]
        }

    return dataset_dict.map(scrub, batched=True, desc="remove class names from the text")


def texts_naming_their_class(texts, labels, names, synonyms=None):
    """How many texts contain a word of `class_terms` of their own class."""
    synonyms = OPENCLIPART_SYNONYMS if synonyms is None else synonyms
    terms = [class_terms(name, synonyms.get(name, ())) for name in names]
    return sum(scrub_text(text, terms[label]) != text.strip(" ,.") for text, label in zip(texts, labels))


def text_probe_accuracy(train_features, train_labels, eval_features, eval_labels, steps=500, weight_decay=1e-4):
    """Top-1 of a linear softmax classifier trained on frozen text features alone (full batch, Adam, standardised
    inputs): how much of the label the privileged text carries. (N, D) features, (N,) int labels -> float."""
    import torch

    generator = torch.Generator().manual_seed(0)
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    x_train, x_eval = (train_features - mean) / std, (eval_features - mean) / std
    num_classes = int(max(train_labels.max(), eval_labels.max())) + 1
    weight = (torch.randn(x_train.shape[1], num_classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(x_train @ weight + bias, train_labels).backward()
        optimizer.step()
    with torch.no_grad():
        return float(((x_eval @ weight + bias).argmax(-1) == eval_labels).float().mean())
