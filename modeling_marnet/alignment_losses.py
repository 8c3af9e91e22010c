"""The cross-modal alignment methods of the paper's Table 1 (SWD, SSAN, CDD, SDM, TEAM, ITA) as loss functions.

Every method has the signature `loss = <name>_loss(image_projected_embeds, text_projected_embeds, labels=None, *,
<method params>, gather=True)`: it reads the projected features `x_v'` and `x_s'` (B, P) of EMA (eq. 6-8), row i of
one paired with row i of the other, and returns a scalar tensor. (The names are those of the notation in
`modeling_marnet.py`; the keywords `image_embeds` and `text_embeds` of MARNet 0.1 still work, with a FutureWarning.)
ITA itself (eq. 5-11) is `image_text_contrastive_loss`, which also returns its logits; `ita_loss` only gives it this
signature. `ALIGNMENT_LOSSES` maps each method's name to its function; `MARNetEmbeddingAlignment` (`alignment.py`)
calls the one that `MARNetConfig.alignment` names.

Choices shared by every method (ours, not the source papers'):
- Every method compares L2-normalised embeddings, the unit sphere on which ITA's cosine similarity (eq. 5) lives, so
  choosing a method changes the objective and not the feature geometry.
- The methods were written for other settings (domain adaptation, person retrieval, image-text retrieval). Here the
  two "domains" are the image and text modalities of the same training set; both are labelled, so the methods that
  need class labels on both sides (CDD, SSAN) use the ground truth instead of the pseudo-labels of their papers.
- Under `torch.distributed` with `gather=True` a method sees the global batch, every process's rows in rank order,
  gathered with `_GatherWithGrad`. A method over the whole batch (SWD, CDD, SSAN) then gives every process the
  one-process loss; a row-wise method (ITA, SDM, TEAM) averages over the local rows against every column, so the mean
  over processes is the one-process loss. `_GatherWithGrad` sums every process's gradient for each row, so in both
  cases DDP's gradient average is the one-process gradient. Every process must hold the same number of rows.
"""

import functools
import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

# CLIP's cap on exp(logit_scale): temperature never drops below 0.01.
MAX_LOGIT_SCALE = math.log(100.0)


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows concatenated in rank order; the backward pass sums every rank's gradient for this rank's rows
    (each rank's loss uses every row), so DDP's gradient average equals the one-process gradient of the mean loss."""

    @staticmethod
    def forward(ctx, features):
        gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, features.contiguous())
        return torch.cat(gathered, dim=0)  # (B * world, P)

    @staticmethod
    def backward(ctx, grad_output):
        grad_output = grad_output.contiguous()
        dist.all_reduce(grad_output)
        rows = grad_output.shape[0] // dist.get_world_size()
        return grad_output[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


# The keywords of the projected features until MARNet 0.1, which name the unprojected `x_v`, `x_s` in the model's
# output -> their names since; the old ones are accepted, with a FutureWarning, until 0.3.
_RENAMED_KEYWORDS = {"image_embeds": "image_projected_embeds", "text_embeds": "text_projected_embeds"}


def _accepts_renamed_keywords(loss_function):
    """`loss_function`, also called with the old keywords of `_RENAMED_KEYWORDS` (with a FutureWarning)."""

    @functools.wraps(loss_function)
    def wrapper(*args, **kwargs):
        for old, new in _RENAMED_KEYWORDS.items():
            if old not in kwargs:
                continue
            if new in kwargs:
                raise TypeError(f"{loss_function.__name__}() got both `{new}` and its deprecated name `{old}`.")
            warnings.warn(
                f"`{loss_function.__name__}({old}=...)` is deprecated and will be removed in MARNet 0.3: pass the "
                f"projected feature as `{new}` (`{old}` is the unprojected feature in the model's output).",
                FutureWarning,
                stacklevel=2,
            )
            kwargs[new] = kwargs.pop(old)
        return loss_function(*args, **kwargs)

    return wrapper


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_without_grad(tensor):
    """Every process's rows of `tensor` in rank order, without gradient (labels, token masks): (B, ...) ->
    (B * world, ...)."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


@_accepts_renamed_keywords
def image_text_contrastive_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`L_ITA = L_v2s + L_s2v` (eq. 9-11): symmetric InfoNCE over the batch on cosine similarities (eq. 5).

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`, row i paired with image row i.
        logit_scale: scalar tensor, `log(1 / tau)`.
        gather: under `torch.distributed`, use every process's rows as negatives.
        labels: (B,) class ids or (B, L) multi-hot rows for class-aware targets (an extension, not in the paper):
            the target of row i is spread equally over every column with the same label (the same label set) instead
            of on column i alone. `None`: eq. 9-10.

    Returns:
        The loss (each direction averaged over the local rows, the two directions summed) and the (B, B_all)
        image-to-text logits.
    """
    image = F.normalize(image_projected_embeds, dim=-1)  # unit-norm x_v': (B, P)
    text = F.normalize(text_projected_embeds, dim=-1)  # unit-norm x_s'
    offset = 0
    all_image, all_text, all_labels = image, text, labels
    if gather and _distributed():
        all_image = _GatherWithGrad.apply(image)  # (B * world, P)
        all_text = _GatherWithGrad.apply(text)
        offset = dist.get_rank() * image.shape[0]
        all_labels = _gather_without_grad(labels) if labels is not None else None
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits_per_image = scale * image @ all_text.t()  # (B, B_all): Sim(x_v'^i, x_s'^b) / tau
    logits_per_text = scale * text @ all_image.t()  # (B, B_all): Sim(x_s'^i, x_v'^b) / tau
    if labels is None:
        targets = torch.arange(image.shape[0], device=image.device) + offset
    else:
        matches = _same_label(labels, all_labels).to(logits_per_image.dtype)  # (B, B_all), diagonal is 1
        targets = matches / matches.sum(dim=-1, keepdim=True)
    loss = F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)
    return loss, logits_per_image


def _check_inputs(method, image, text, labels, labels_needed_for=None):
    """Shapes (B, P), (B, P) and (B,) or (B, L); `labels_needed_for` says why `method` cannot run without labels."""
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(
            f"`{method}` alignment needs image and text embeddings of the same shape (B, P), got "
            f"{tuple(image.shape)} and {tuple(text.shape)}."
        )
    if labels is None:
        if labels_needed_for is not None:
            raise ValueError(f"`{method}` alignment needs `labels`: {labels_needed_for}. Got labels=None.")
    elif labels.dim() not in (1, 2) or labels.shape[0] != image.shape[0]:
        raise ValueError(
            f"`{method}` alignment needs labels of shape ({image.shape[0]},) (class ids) or "
            f"({image.shape[0]}, L) (multi-hot rows), got {tuple(labels.shape)}."
        )


def _global_batch(gather, *tensors):
    """Every process's rows in rank order, with gradients, when gathering under `torch.distributed`; else `tensors`."""
    if gather and _distributed():
        return tuple(_GatherWithGrad.apply(tensor) for tensor in tensors)
    return tensors


def _global_labels(gather, labels):
    return _gather_without_grad(labels) if gather and _distributed() else labels


def _row_offset(gather, batch_size):
    """Index of this process's first row in the global batch."""
    return dist.get_rank() * batch_size if gather and _distributed() else 0


def _class_one_hot(labels, dtype):
    """(B,) class ids or (B, L) multi-hot rows -> (B, M) one-hot over the M distinct labels (label sets) present."""
    _, index = torch.unique(labels, dim=0, return_inverse=True)
    return F.one_hot(index).to(dtype)


def _same_label(labels, all_labels):
    """(B, B_all) bool: row i and column j carry the same class id (the same label set for multi-hot rows)."""
    matches = labels[:, None] == all_labels[None, :]  # (B, B_all), or (B, B_all, L) for multi-hot rows
    return matches.all(dim=-1) if matches.dim() == 3 else matches


@_accepts_renamed_keywords
def ita_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    logit_scale: torch.Tensor,
    gather: bool = True,
) -> torch.Tensor:
    """`L_ITA = L_v2s + L_s2v` (MARNet eq. 5-11), the paper's own alignment, with the signature shared by every method.

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`, row i paired with image row i.
        labels: `None` for the instance targets of eq. 9-10, or (B,) / (B, L) labels for class-aware targets (see
            `image_text_contrastive_loss`).
        logit_scale: scalar tensor, `log(1 / tau)`.
        gather: under `torch.distributed`, use every process's rows as negatives.

    Returns:
        The scalar loss of `image_text_contrastive_loss`.
    """
    _check_inputs("ita", image_projected_embeds, text_projected_embeds, labels)
    return image_text_contrastive_loss(image_projected_embeds, text_projected_embeds, logit_scale, gather, labels)[0]


@_accepts_renamed_keywords
def sdm_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    logit_scale: torch.Tensor,
    epsilon: float = 1e-8,
    gather: bool = True,
) -> torch.Tensor:
    """Similarity Distribution Matching (IRRA, Jiang & Ye, CVPR 2023, Sec. 3.3): `L_sdm = L_i2t + L_t2i`.

    In IRRA's notation, with `sim` the cosine similarity and `y_ij = 1` when image i and text j match:

        p_ij = exp(sim(f_i^v, f_j^t) / tau) / sum_k exp(sim(f_i^v, f_k^t) / tau)
        q_ij = y_ij / sum_k y_ik
        L_i2t = KL(p_i || q_i) = 1/N sum_i sum_j p_ij log(p_ij / (q_ij + epsilon))

    and `L_t2i` the same with the roles of images and texts swapped. Unlike ITA's cross-entropy `KL(q || p)`, the KL
    runs from the predicted to the true distribution, and every text with the image's label is a true match.

    Our choices: a match is a pair with the same class label (IRRA's person identity; the same label set for
    multi-hot rows); `tau` is MARNet's temperature (`logit_scale`, learnable or frozen as the model configures it)
    where IRRA fixes `tau = 0.02`; IRRA's ID loss and implicit relation reasoning (masked language modelling through a
    cross-modal encoder) are separate objectives and are not part of this loss.

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`, row i paired with image row i.
        labels: (B,) class ids or (B, L) multi-hot rows. Required.
        logit_scale: scalar tensor, `log(1 / tau)`; `exp` is capped at 100 as for ITA.
        epsilon: IRRA's `epsilon`, which keeps `log(q_ij + epsilon)` finite where `q_ij = 0`.
        gather: under `torch.distributed`, every process's rows are columns of the distributions.

    Returns:
        Scalar loss: each direction averaged over the local rows, the two directions summed.
    """
    _check_inputs(
        "sdm",
        image_projected_embeds,
        text_projected_embeds,
        labels,
        "the true-matching distribution q pairs the images and texts that share a label",
    )
    # x_v' and x_s' on the unit sphere, (B, P), and those of the global batch, (B_all, P).
    image, text = F.normalize(image_projected_embeds, dim=-1), F.normalize(text_projected_embeds, dim=-1)
    all_image, all_text = _global_batch(gather, image, text)
    matches = _same_label(labels, _global_labels(gather, labels)).to(image.dtype)  # (B, B_all): y_ij
    log_q = torch.log(matches / matches.sum(dim=-1, keepdim=True) + epsilon)  # (B, B_all): log(q_ij + epsilon)
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def divergence(logits):  # (B, B_all) -> mean over rows of KL(p_i || q_i)
        log_p = logits.log_softmax(dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()

    image_to_text = divergence(scale * image @ all_text.t())  # sim(f_i^v, f_j^t) / tau
    text_to_image = divergence(scale * text @ all_image.t())
    return image_to_text + text_to_image


@_accepts_renamed_keywords
def swd_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    num_projections: int = 128,
    projections: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Sliced Wasserstein Discrepancy (Lee et al., CVPR 2019, Sec. 3) between the image and the text embeddings.

    Lee et al. define, for distributions `mu` and `nu` on `R^d` and `R_theta` the projection on the direction
    `theta`,

        SWD(mu, nu) = integral over theta in S^{d-1} of W(R_theta mu, R_theta nu) d theta,

    estimated (their Algorithm 1) with M directions drawn uniformly on the unit sphere: each sample set is projected on
    every direction, each 1-D projection is sorted, and the squared differences of the sorted values (the 1-D
    Wasserstein distance between equally sized empirical distributions) are averaged. Their public code draws 128
    directions each step and averages the squares over samples and directions, as done here.

    Our choices: the two compared distributions are the B image embeddings and the B text embeddings (Lee et al.
    compare the outputs of two classifiers on the same target samples, inside a min-max scheme that is not used here);
    the pairing of rows and the labels play no part, only the two point clouds do; the embeddings are L2-normalised
    first, which rules out the trivial minimum of shrinking both modalities to the origin; under `torch.distributed`
    the directions drawn by process 0 are broadcast so that every process computes the same global loss.

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`.
        labels: unused (SWD is label-free); accepted, and shape-checked, for the signature shared by every method.
        num_projections: M, the number of random directions drawn when `projections` is None.
        projections: optional (P, M) directions, one per column (normalised here), instead of random ones.
        gather: under `torch.distributed`, compare the distributions of the global batch.

    Returns:
        Scalar loss: the mean over directions of the squared 1-D Wasserstein-2 distance.
    """
    _check_inputs("swd", image_projected_embeds, text_projected_embeds, labels)
    # x_v' and x_s' on the unit sphere, (B, P), and those of the global batch, (B_all, P).
    image, text = F.normalize(image_projected_embeds, dim=-1), F.normalize(text_projected_embeds, dim=-1)
    all_image, all_text = _global_batch(gather, image, text)
    dim = image.shape[1]
    if projections is None:
        projections = torch.randn(dim, num_projections, device=image.device, dtype=image.dtype)
        if gather and _distributed():
            dist.broadcast(projections, src=0)
    elif projections.dim() != 2 or projections.shape[0] != dim:
        raise ValueError(
            f"`swd` alignment needs projections of shape ({dim}, M) (one direction per column), got "
            f"{tuple(projections.shape)}."
        )
    projections = F.normalize(projections.to(image.dtype), dim=0)  # (P, M): theta_m on S^{P-1}
    image_slices = (all_image @ projections).sort(dim=0).values  # (B_all, M): sorted R_theta mu
    text_slices = (all_text @ projections).sort(dim=0).values  # (B_all, M): sorted R_theta nu
    return (image_slices - text_slices).pow(2).mean()


@_accepts_renamed_keywords
def cdd_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kernel_num: int = 5,
    kernel_mul: float = 2.0,
    gather: bool = True,
) -> torch.Tensor:
    """Contrastive Domain Discrepancy (CAN, Kang et al., CVPR 2019, Sec. 3.2): intra- minus inter-class MMD.

    With `k` a kernel, source samples `x^s` (here: images) and target samples `x^t` (here: texts), the squared MMD
    between source class c1 and target class c2 is estimated from the kernel means

        D^{c1 c2} = e1 + e2 - 2 e3,
        e1 = mean over pairs (i, j) of source samples of class c1 of k(x_i^s, x_j^s),
        e2 = mean over pairs (i, j) of target samples of class c2 of k(x_i^t, x_j^t),
        e3 = mean over source samples i of class c1 and target samples j of class c2 of k(x_i^s, x_j^t),

    and over the M classes

        D^cdd = 1/M sum_c D^{cc} - 1/(M (M - 1)) sum_c sum_{c' != c} D^{c c'}:

    the first (intra-class) term pulls each class's images and texts together, the second (inter-class) term pushes
    different classes apart. With a single class only the intra-class term remains, as in CAN's code.

    CAN's kernel, as in its public code, is a sum of Gaussians `exp(-||x - y||^2 / gamma_i)` whose bandwidths are the
    mean squared distance scaled by `kernel_mul ** (i - kernel_num // 2)`, `i < kernel_num`. Our choices: the labels
    of both modalities are the ground truth (CAN clusters the unlabelled target domain for pseudo-labels and samples
    class-aware mini-batches); M counts the classes present in the (global) batch; one layer of features (CAN adds
    the CDD of its feature layer and of its class-probability layer); one bandwidth estimated from the whole batch,
    images and texts pooled and the estimate detached (CAN estimates one per class pair); the Gaussians are averaged
    instead of summed, so `k(x, x) = 1` and the loss lies in [-2, 2]. CAN's defaults are kept: `kernel_num=5`,
    `kernel_mul=2`.

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`.
        labels: (B,) class ids or (B, L) multi-hot rows (each distinct label set is a class). Required.
        kernel_num: number of Gaussian kernels.
        kernel_mul: ratio between the bandwidths of consecutive kernels.
        gather: under `torch.distributed`, compute CDD over the global batch.

    Returns:
        Scalar loss `D^cdd` (negative when classes are further apart than modalities).
    """
    _check_inputs(
        "cdd",
        image_projected_embeds,
        text_projected_embeds,
        labels,
        "the intra- and inter-class discrepancies group the images and texts by class",
    )
    # x_v' and x_s' on the unit sphere, (B, P), and those of the global batch, (B_all, P).
    image, text = F.normalize(image_projected_embeds, dim=-1), F.normalize(text_projected_embeds, dim=-1)
    all_image, all_text = _global_batch(gather, image, text)
    one_hot = _class_one_hot(_global_labels(gather, labels), image.dtype)  # (B_all, M)
    counts = one_hot.sum(dim=0)  # (M,) samples per class, the same in both modalities

    features = torch.cat([all_image, all_text])  # (2 B_all, P)
    squared_distances = (2 - 2 * features @ features.t()).clamp(min=0)  # (2 B_all, 2 B_all): unit vectors
    size = features.shape[0]
    bandwidth = (squared_distances.detach().sum() / (size * size - size)).clamp(min=1e-5)
    exponents = torch.arange(kernel_num, device=features.device, dtype=features.dtype) - kernel_num // 2
    bandwidths = bandwidth * kernel_mul**exponents  # (K,)
    kernel = torch.exp(-squared_distances / bandwidths[:, None, None]).mean(dim=0)  # (2 B_all, 2 B_all)

    rows = all_image.shape[0]
    image_kernel, text_kernel, cross_kernel = kernel[:rows, :rows], kernel[rows:, rows:], kernel[:rows, rows:]
    e1 = (one_hot.t() @ image_kernel @ one_hot).diagonal() / counts**2  # (M,)
    e2 = (one_hot.t() @ text_kernel @ one_hot).diagonal() / counts**2  # (M,)
    e3 = one_hot.t() @ cross_kernel @ one_hot / (counts[:, None] * counts[None, :])  # (M, M): image c1, text c2
    discrepancy = e1[:, None] + e2[None, :] - 2 * e3  # (M, M): D^{c1 c2}
    intra = discrepancy.diagonal().mean()
    num_classes = discrepancy.shape[0]
    if num_classes == 1:
        return intra
    inter = (discrepancy.sum() - discrepancy.diagonal().sum()) / (num_classes * (num_classes - 1))
    return intra - inter


@_accepts_renamed_keywords
def ssan_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    gather: bool = True,
) -> torch.Tensor:
    """Triplet-centroid alignment of SSAN (Li et al., ACM MM 2020, Sec. 3), across the image and text modalities.

    SSAN aligns, for every class k, the centroid `mu_s^k` of the source features, the centroid `mu_t^k` of the target
    features and the centroid `mu_st^k` of both domains' features of that class:

        L = sum_k ||mu_s^k - mu_t^k||^2 + ||mu_s^k - mu_st^k||^2 + ||mu_t^k - mu_st^k||^2.

    Since every class holds as many images as texts here, `mu_st^k` is the midpoint of the two others and the loss is
    3/2 of the two-centroid distance `||mu_s^k - mu_t^k||^2`.

    Our choices: source and target are the text and image modalities, with ground-truth labels on both sides (SSAN
    pseudo-labels its unlabelled target samples and refines them by geometric similarity); centroids are computed
    over the (global) batch (SSAN's public code trains on the whole data set at every step) and the loss is averaged
    over the classes present instead of summed over all classes. Two other SSAN terms are left out: the implicit
    semantic correlation loss (a distillation of the source classifier's per-class soft predictions into the target
    classifier) needs class predictions of the text branch, which MARNet's alignment does not have; the adversarial
    domain discriminator needs a module of its own and is not an alignment of classes.

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`.
        labels: (B,) class ids or (B, L) multi-hot rows (each distinct label set is a class). Required.
        gather: under `torch.distributed`, take the centroids over the global batch.

    Returns:
        Scalar loss: the mean over the classes present of the three squared centroid distances.
    """
    _check_inputs("ssan", image_projected_embeds, text_projected_embeds, labels, "the centroids are taken per class")
    # x_v' and x_s' on the unit sphere, (B, P), and those of the global batch, (B_all, P).
    image, text = F.normalize(image_projected_embeds, dim=-1), F.normalize(text_projected_embeds, dim=-1)
    all_image, all_text = _global_batch(gather, image, text)
    one_hot = _class_one_hot(_global_labels(gather, labels), image.dtype)  # (B_all, M)
    counts = one_hot.sum(dim=0)[:, None]  # (M, 1)
    image_centroids = one_hot.t() @ all_image / counts  # (M, P)
    text_centroids = one_hot.t() @ all_text / counts  # (M, P)
    joint_centroids = one_hot.t() @ (all_image + all_text) / (2 * counts)  # (M, P): both modalities

    def squared_distance(a, b):  # (M, P), (M, P) -> (M,)
        return (a - b).pow(2).sum(dim=-1)

    per_class = (
        squared_distance(image_centroids, text_centroids)
        + squared_distance(image_centroids, joint_centroids)
        + squared_distance(text_centroids, joint_centroids)
    )
    return per_class.mean()


def _token_match_scores(text_tokens, text_mask, image_tokens, attention_temperature):
    """TEAM's pair scores: every text's tokens attend over every image's tokens, scored by cosine, averaged per text.

    Args:
        text_tokens: (B_t, T, C) unit-norm text token features.
        text_mask: (B_t, T) 1 for real tokens, 0 for padding.
        image_tokens: (B_i, N, C) unit-norm image token features.
        attention_temperature: temperature of the softmax over the image tokens.

    Returns:
        (B_t, B_i) scores: for text a and image b, the mean over a's tokens t of `cos(t, r_t)`, with
        `r_t = sum_n softmax_n(cos(t, v_n) / temperature) v_n` the image token aligned to t.
    """
    similarity = torch.einsum("atc,bnc->abtn", text_tokens, image_tokens)  # (B_t, B_i, T, N): cos(t, v_n)
    attention = (similarity / attention_temperature).softmax(dim=-1)  # (B_t, B_i, T, N)
    # cos(t, r_t) = t . r_t / |r_t| with |t| = 1; |r_t|^2 = a^T G a for the image's Gram matrix G, so the aligned
    # tokens r_t, (B_t, B_i, T, C), are never built.
    gram = image_tokens @ image_tokens.transpose(1, 2)  # (B_i, N, N)
    dot = (attention * similarity).sum(dim=-1)  # (B_t, B_i, T): t . r_t
    squared_norm = ((attention @ gram) * attention).sum(dim=-1)  # (B_t, B_i, T): |r_t|^2
    token_scores = dot / squared_norm.clamp(min=1e-12).sqrt()  # (B_t, B_i, T)
    mask = text_mask.to(token_scores.dtype)[:, None, :]  # (B_t, 1, T)
    return (token_scores * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # (B_t, B_i)


def _pad_tokens(text_tokens, text_mask):
    """Pads (B, T, C) tokens and their (B, T) mask to the longest T of all processes, so that they can be gathered."""
    length = torch.tensor([text_tokens.shape[1]], device=text_tokens.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    padding = int(length.item()) - text_tokens.shape[1]
    return F.pad(text_tokens, (0, 0, 0, padding)), F.pad(text_mask, (0, padding))


@_accepts_renamed_keywords
def team_loss(
    image_projected_embeds: torch.Tensor,
    text_projected_embeds: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    logit_scale: torch.Tensor,
    image_tokens: torch.Tensor | None = None,
    text_tokens: torch.Tensor | None = None,
    text_attention_mask: torch.Tensor | None = None,
    attention_temperature: float = 0.1,
    token_logit_scale: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Token Embeddings Alignment (TEAM, Xie et al., ACM MM 2022): global contrastive loss plus a token-level one.

    TEAM aligns every text token `t` with the image tokens: its TEAM blocks (self-attention, cross-attention from the
    text tokens to the image tokens, MLP; six blocks in its public code) retrieve for each `t` an aligned visual token
    `r_t`; the token-level matching score of an image-text pair is the mean over the text's (unpadded) tokens of
    `cos(t, r_t)`. A contrastive loss on these scores is added to the CLIP loss on the global embeddings.

    What we implement: `L = L_ITA(x_v', x_s') + L_token`, with `L_ITA` MARNet's eq. 9-11 on the pooled embeddings and
    `L_token` the same symmetric InfoNCE on the token-level scores `S(text a, image b)`, where `r_t` is a
    parameter-free attention: `r_t = sum_n softmax_n(cos(t, v_n) / attention_temperature) v_n`.

    Our choices: one parameter-free attention step instead of TEAM's learned blocks (the token features must already
    share one space, e.g. projected token-wise by the EMA heads); every pair of the (global) batch is scored and every
    other pair is a negative (TEAM samples one hard negative per direction from the global similarities and scores
    each of its blocks); MARNet's sum of the two directions; `token_logit_scale` (TEAM learns a second temperature)
    defaults to `logit_scale`; `labels` give class-aware targets as for ITA.

    What it reduces to without token features: a missing side counts as one token, its pooled embedding.
    - Pooled text, image tokens given ("TEAM, pooled text"): the pooled text embedding is the only query; `r` is the
      text-guided attention pooling of the image tokens and `S(a, b) = cos(x_s'^a, r_ab)`.
    - Pooled text and pooled image: the attention is over one token, `r = x_v'`, `S` is the cosine similarity of the
      global embeddings, so `L_token = L_ITA` and TEAM is ITA with twice the weight. Label such runs accordingly.

    Memory and compute grow as B * B_all * T * N (every text token against every image token of every pair).

    Args:
        image_projected_embeds: (B, P) projected visual features `x_v'`.
        text_projected_embeds: (B, P) projected text features `x_s'`, row i paired with image row i.
        labels: optional (B,) class ids or (B, L) multi-hot rows for class-aware targets; `None`: instance targets.
        logit_scale: scalar tensor, `log(1 / tau)` of the global term (and of the token term by default).
        image_tokens: optional (B, N, C) image token features (e.g. the ViT patch tokens, projected); `None`: the
            pooled `image_projected_embeds` as the only token.
        text_tokens: optional (B, T, C) text token features (e.g. the text encoder's token states, projected);
            `None`: the pooled `text_projected_embeds` as the only token.
        text_attention_mask: optional (B, T) mask of `text_tokens`, 1 for real tokens and 0 for padding.
        attention_temperature: temperature of the text-to-image token attention.
        token_logit_scale: optional scalar tensor, `log(1 / tau)` of the token term.
        gather: under `torch.distributed`, every process's rows are negatives (tokens are padded to a common length).

    Returns:
        Scalar loss `L_ITA + L_token`.
    """
    _check_inputs("team", image_projected_embeds, text_projected_embeds, labels)
    global_loss, _ = image_text_contrastive_loss(
        image_projected_embeds, text_projected_embeds, logit_scale, gather, labels
    )
    batch_size = image_projected_embeds.shape[0]
    image_tokens = image_projected_embeds[:, None, :] if image_tokens is None else image_tokens  # (B, N, C)
    text_tokens = text_projected_embeds[:, None, :] if text_tokens is None else text_tokens  # (B, T, C)
    if text_attention_mask is None:
        text_attention_mask = torch.ones(text_tokens.shape[:2], dtype=torch.long, device=text_tokens.device)
    if (
        image_tokens.dim() != 3
        or text_tokens.dim() != 3
        or image_tokens.shape[0] != batch_size
        or text_tokens.shape[0] != batch_size
        or image_tokens.shape[2] != text_tokens.shape[2]
        or text_attention_mask.shape != text_tokens.shape[:2]
    ):
        raise ValueError(
            f"`team` alignment needs image tokens (B, N, C), text tokens (B, T, C) and a text mask (B, T) with "
            f"B={batch_size} and one C (a missing side is its (B, P) embedding as one token), got image tokens "
            f"{tuple(image_tokens.shape)}, text tokens {tuple(text_tokens.shape)} and mask "
            f"{tuple(text_attention_mask.shape)}."
        )
    image_tokens, text_tokens = F.normalize(image_tokens, dim=-1), F.normalize(text_tokens, dim=-1)
    text_attention_mask = text_attention_mask.to(text_tokens.dtype)

    distributed = gather and _distributed()
    if distributed:
        text_tokens, text_attention_mask = _pad_tokens(text_tokens, text_attention_mask)
    all_image_tokens, all_text_tokens = _global_batch(gather, image_tokens, text_tokens)
    scores_per_text = _token_match_scores(text_tokens, text_attention_mask, all_image_tokens, attention_temperature)
    if distributed:  # local images against every process's texts
        all_mask = _gather_without_grad(text_attention_mask)
        scores_per_image = _token_match_scores(all_text_tokens, all_mask, image_tokens, attention_temperature).t()
    else:
        scores_per_image = scores_per_text.t()  # (B, B_all): S(text j, image i)

    offset = _row_offset(gather, batch_size)
    if labels is None:
        targets = torch.arange(batch_size, device=image_projected_embeds.device) + offset
    else:
        matches = _same_label(labels, _global_labels(gather, labels)).to(scores_per_text.dtype)  # (B, B_all)
        targets = matches / matches.sum(dim=-1, keepdim=True)
    scale = (logit_scale if token_logit_scale is None else token_logit_scale).clamp(max=MAX_LOGIT_SCALE).exp()
    token_loss = F.cross_entropy(scale * scores_per_text, targets) + F.cross_entropy(scale * scores_per_image, targets)
    return global_loss + token_loss


# Name of the `alignment` choice -> loss function.
ALIGNMENT_LOSSES = {
    "ita": ita_loss,
    "sdm": sdm_loss,
    "swd": swd_loss,
    "cdd": cdd_loss,
    "ssan": ssan_loss,
    "team": team_loss,
}
# Methods that raise without `labels`; methods whose optional `labels` turn instance targets into class-aware ones
# (`MARNetConfig.alignment_targets`); methods that take the `logit_scale` temperature.
ALIGNMENTS_NEEDING_LABELS = frozenset({"sdm", "cdd", "ssan"})
ALIGNMENTS_WITH_CLASS_TARGETS = frozenset({"ita", "team"})
ALIGNMENTS_WITH_TEMPERATURE = frozenset({"ita", "sdm", "team"})
