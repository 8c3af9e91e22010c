"""The alignment methods of the paper's Table 1 checked on numbers against direct transcriptions of their source
papers' formulas, on properties that would catch real bugs, and under simulated DDP.

The DDP check runs two ranks as two threads of this process with `torch.distributed`'s collectives replaced by a
shared-memory implementation (as open_clip's loss tests mock them): it exercises the real `_GatherWithGrad` forward
and backward, and stays fast where two spawned processes would spend most of their time importing transformers. A
real two-process gloo run of the trainer is `test_train_distributed.py`.
"""

import ast
import math
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from modeling_marnet import alignment_losses
from modeling_marnet.alignment_losses import (
    ALIGNMENT_LOSSES,
    ALIGNMENTS_NEEDING_LABELS,
    ALIGNMENTS_WITH_CLASS_TARGETS,
    ALIGNMENTS_WITH_TEMPERATURE,
    cdd_loss,
    image_text_contrastive_loss,
    ita_loss,
    sdm_loss,
    ssan_loss,
    swd_loss,
    team_loss,
)

DTYPE = torch.float64
LOGIT_SCALE = torch.tensor(math.log(1 / 0.5), dtype=DTYPE)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=DTYPE), dim=-1)


def random_batch(batch_size=6, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch_size, dim, generator=generator, dtype=DTYPE)
    text = torch.randn(batch_size, dim, generator=generator, dtype=DTYPE)
    labels = torch.tensor([0, 1, 0, 2, 1, 0][:batch_size])
    return image, text, labels


def method_kwargs(method, dim=5):
    """Keyword arguments that make `method` deterministic on (B, `dim`) inputs."""
    kwargs = {"logit_scale": LOGIT_SCALE} if method in ALIGNMENTS_WITH_TEMPERATURE else {}
    if method == "swd":
        kwargs["projections"] = torch.randn(dim, 16, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    return kwargs


def test_the_registry_holds_every_method_of_table_1():
    assert set(ALIGNMENT_LOSSES) == {"ita", "sdm", "swd", "cdd", "ssan", "team"}
    for subset in (ALIGNMENTS_NEEDING_LABELS, ALIGNMENTS_WITH_CLASS_TARGETS, ALIGNMENTS_WITH_TEMPERATURE):
        assert subset <= set(ALIGNMENT_LOSSES)
    assert not ALIGNMENTS_NEEDING_LABELS & ALIGNMENTS_WITH_CLASS_TARGETS  # labels either required or optional


def test_the_module_imports_only_torch_the_standard_library_and_siblings_for_remote_code():
    tree = ast.parse(Path(alignment_losses.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(alias.name.split(".")[0] in ("torch", "functools", "math", "warnings") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 or node.module.split(".")[0] == "torch", node.module


def test_ita_is_the_papers_loss():
    image, text, labels = random_batch()
    expected, _ = image_text_contrastive_loss(image, text, LOGIT_SCALE)
    torch.testing.assert_close(ita_loss(image, text, logit_scale=LOGIT_SCALE), expected)
    expected_class, _ = image_text_contrastive_loss(image, text, LOGIT_SCALE, labels=labels)
    torch.testing.assert_close(ita_loss(image, text, labels, logit_scale=LOGIT_SCALE), expected_class)


# SDM (IRRA, Sec. 3.3)


def test_sdm_on_two_orthogonal_pairs_of_one_class():
    # tau = 1, sim = [[1, 0], [0, 1]], q = [1/2, 1/2] in every row: each row is KL((p, 1-p) || (1/2, 1/2)).
    image = text = unit([1.0, 0.0], [0.0, 1.0])
    p = 1 / (1 + math.exp(-1))
    row = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    loss = sdm_loss(image, text, torch.tensor([3, 3]), logit_scale=torch.tensor(0.0, dtype=DTYPE))
    assert loss.item() == pytest.approx(2 * row, rel=1e-6)


def test_sdm_is_irras_kl_between_similarity_and_true_matching_distributions():
    image, text, labels = random_batch()
    tau, epsilon, n = 0.5, 1e-8, len(labels)

    def sim(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    def direction(x, y):  # L_i2t = 1/N sum_i sum_j p_ij log(p_ij / (q_ij + epsilon))
        total = 0.0
        for i in range(n):
            weights = [math.exp(sim(x[i], y[j]) / tau) for j in range(n)]
            p = [w / sum(weights) for w in weights]
            y_i = [float(labels[i] == labels[j]) for j in range(n)]
            q = [value / sum(y_i) for value in y_i]
            total += sum(p[j] * math.log(p[j] / (q[j] + epsilon)) for j in range(n))
        return total / n

    expected = direction(image, text) + direction(text, image)
    assert sdm_loss(image, text, labels, logit_scale=LOGIT_SCALE).item() == pytest.approx(expected, rel=1e-9)


def test_sdm_vanishes_when_similarities_follow_the_labels_where_instance_ita_does_not():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    image = text = F.one_hot(labels).to(DTYPE)  # same-class cosine 1, other classes 0
    sharp = torch.tensor(math.log(100.0), dtype=DTYPE)
    assert sdm_loss(image, text, labels, logit_scale=sharp).item() == pytest.approx(0.0, abs=1e-6)
    assert ita_loss(image, text, logit_scale=sharp).item() > 1.0  # log(3) and log(2) per row: same-class ties


# SWD (Lee et al., Sec. 3)


def test_swd_on_axis_directions():
    # x-axis: images {1, 0} vs texts {0, -1}, sorted differences 1, 1; y-axis: {0, 1} vs {1, 0}, differences 0, 0.
    image, text = unit([1.0, 0.0], [0.0, 1.0]), unit([0.0, 1.0], [-1.0, 0.0])
    loss = swd_loss(image, text, projections=torch.eye(2, dtype=DTYPE))
    assert loss.item() == pytest.approx((1 + 1 + 0 + 0) / 4)


def test_swd_sorts_each_projection_and_averages_the_squared_differences():
    image, text, _ = random_batch()
    directions = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    v, s = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    total = 0.0
    for m in range(7):
        theta = directions[:, m] / directions[:, m].norm()
        a, b = sorted((v @ theta).tolist()), sorted((s @ theta).tolist())
        total += sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
    assert swd_loss(image, text, projections=directions).item() == pytest.approx(total / 7, rel=1e-9)


def test_swd_compares_distributions_not_pairs():
    image, text, _ = random_batch()
    assert swd_loss(image, image).item() == pytest.approx(0.0, abs=1e-12)
    assert swd_loss(image, 3 * image[torch.tensor([2, 0, 1, 5, 3, 4])]).item() == pytest.approx(0.0, abs=1e-12)
    assert swd_loss(image, text).item() > 1e-3


# CDD (CAN, Sec. 3.2)


def cdd_by_hand(image, text, labels, kernel_num, kernel_mul):
    """D^cdd transcribed: kernel means e1, e2, e3 per class pair; intra-class mean minus inter-class mean."""
    v, s, labels = F.normalize(image, dim=-1), F.normalize(text, dim=-1), labels.tolist()
    pooled = list(v) + list(s)

    def squared(a, b):
        return float(((a - b) ** 2).sum())

    n = len(pooled)
    gamma = sum(squared(a, b) for a in pooled for b in pooled) / (n * n - n)
    gammas = [gamma * kernel_mul ** (i - kernel_num // 2) for i in range(kernel_num)]

    def k(a, b):
        return sum(math.exp(-squared(a, b) / g) for g in gammas) / kernel_num

    def mean(values):
        values = list(values)
        return sum(values) / len(values)

    def discrepancy(c1, c2):
        source = [x for x, y in zip(v, labels) if y == c1]
        target = [x for x, y in zip(s, labels) if y == c2]
        e1 = mean(k(a, b) for a in source for b in source)
        e2 = mean(k(a, b) for a in target for b in target)
        e3 = mean(k(a, b) for a in source for b in target)
        return e1 + e2 - 2 * e3

    classes = sorted(set(labels))
    m = len(classes)
    intra = sum(discrepancy(c, c) for c in classes) / m
    inter = sum(discrepancy(c1, c2) for c1 in classes for c2 in classes if c1 != c2) / (m * (m - 1))
    return intra - inter


def test_cdd_of_one_class_of_one_pair_is_the_gaussian_mmd():
    # Pooled squared distances {2, 2} off the diagonal: gamma = 2; MMD = k(v, v) + k(s, s) - 2 k(v, s) = 2 - 2 / e.
    loss = cdd_loss(unit([1.0, 0.0]), unit([0.0, 1.0]), torch.tensor([4]), kernel_num=1)
    assert loss.item() == pytest.approx(2 - 2 / math.e)


def test_cdd_is_cans_intra_minus_inter_class_discrepancy():
    image, text, labels = random_batch()
    expected = cdd_by_hand(image, text, labels, kernel_num=3, kernel_mul=2.0)
    assert cdd_loss(image, text, labels, kernel_num=3, kernel_mul=2.0).item() == pytest.approx(expected, rel=1e-9)


def test_cdd_pulls_classes_across_modalities_together_and_pushes_classes_apart():
    image, _, labels = random_batch()
    aligned = cdd_loss(image, image, labels)  # every intra-class MMD is 0: the loss is minus the inter-class mean
    assert aligned < 0
    swap = torch.tensor([1, 0, 3, 2, 5, 4])  # each text moved to an image of another class
    assert cdd_loss(image, image[swap], labels) > aligned


# SSAN (Li et al., Sec. 3)


def test_ssan_on_two_classes():
    # Class 0: both centroids (1/2, 1/2), distance 0. Class 1: (1, 0) vs (0, 1), joint (1/2, 1/2): 2 + 1/2 + 1/2.
    image = unit([1.0, 0.0], [0.0, 1.0], [1.0, 0.0])
    text = unit([0.0, 1.0], [1.0, 0.0], [0.0, 1.0])
    assert ssan_loss(image, text, torch.tensor([0, 0, 1])).item() == pytest.approx((0 + 3) / 2)


def test_ssan_is_three_halves_of_the_centroid_distance_and_blind_to_moves_within_a_class():
    image, text, labels = random_batch()
    v, s = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    classes = labels.unique()
    expected = sum(1.5 * (v[labels == c].mean(0) - s[labels == c].mean(0)).pow(2).sum() for c in classes) / 3
    torch.testing.assert_close(ssan_loss(image, text, labels), expected)
    within = torch.tensor([2, 4, 5, 3, 1, 0])  # texts shuffled among rows of their own class
    assert (labels[within] == labels).all()
    torch.testing.assert_close(ssan_loss(image, text[within], labels), expected)


# TEAM (Xie et al.)


def team_by_hand(image, text, image_tokens, text_tokens, mask, tau, attention_temperature):
    """L_ITA on the pooled embeddings plus the InfoNCE of the token-level scores, transcribed with loops."""
    n = image.shape[0]

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    def score(a, b):  # mean over text a's real tokens t of cos(t, r_t), r_t attention over image b's tokens
        values = []
        for t, keep in zip(text_tokens[a], mask[a]):
            if keep:
                weights = [math.exp(cos(t, v) / attention_temperature) for v in image_tokens[b]]
                r = sum(w / sum(weights) * F.normalize(v, dim=0) for w, v in zip(weights, image_tokens[b]))
                values.append(cos(t, r))
        return sum(values) / len(values)

    scores = [[score(a, b) for b in range(n)] for a in range(n)]  # text a, image b

    def info_nce(rows):
        return (
            sum(-math.log(math.exp(row[i] / tau) / sum(math.exp(x / tau) for x in row)) for i, row in enumerate(rows))
            / n
        )

    token_loss = info_nce(scores) + info_nce([list(column) for column in zip(*scores)])
    global_loss, _ = image_text_contrastive_loss(image, text, torch.tensor(math.log(1 / tau), dtype=DTYPE))
    return global_loss.item() + token_loss


def test_team_aligns_text_tokens_to_attended_image_tokens():
    generator = torch.Generator().manual_seed(4)
    image, text = (
        torch.randn(3, 4, generator=generator, dtype=DTYPE),
        torch.randn(3, 4, generator=generator, dtype=DTYPE),
    )
    image_tokens = torch.randn(3, 5, 4, generator=generator, dtype=DTYPE)
    text_tokens = torch.randn(3, 4, 4, generator=generator, dtype=DTYPE)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    expected = team_by_hand(image, text, image_tokens, text_tokens, mask, tau=0.5, attention_temperature=0.2)
    loss = team_loss(
        image,
        text,
        logit_scale=LOGIT_SCALE,
        image_tokens=image_tokens,
        text_tokens=text_tokens,
        text_attention_mask=mask,
        attention_temperature=0.2,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_team_with_pooled_text_attends_over_the_image_tokens():
    generator = torch.Generator().manual_seed(5)
    image, text = (
        torch.randn(3, 4, generator=generator, dtype=DTYPE),
        torch.randn(3, 4, generator=generator, dtype=DTYPE),
    )
    image_tokens = torch.randn(3, 5, 4, generator=generator, dtype=DTYPE)
    expected = team_by_hand(
        image, text, image_tokens, text[:, None], torch.ones(3, 1), tau=0.5, attention_temperature=0.1
    )
    loss = team_loss(image, text, logit_scale=LOGIT_SCALE, image_tokens=image_tokens)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_team_without_tokens_is_ita_twice():
    image, text, labels = random_batch()
    ita = ita_loss(image, text, logit_scale=LOGIT_SCALE)
    torch.testing.assert_close(team_loss(image, text, logit_scale=LOGIT_SCALE), 2 * ita)
    other_scale = torch.tensor(2.0, dtype=DTYPE)
    torch.testing.assert_close(
        team_loss(image, text, labels, logit_scale=LOGIT_SCALE, token_logit_scale=other_scale),
        ita_loss(image, text, labels, logit_scale=LOGIT_SCALE)
        + ita_loss(image, text, labels, logit_scale=other_scale),
    )


def test_team_ignores_padding_tokens():
    generator = torch.Generator().manual_seed(6)
    image, text, _ = random_batch(4, 4)
    image_tokens = torch.randn(4, 3, 4, generator=generator, dtype=DTYPE)
    text_tokens = torch.randn(4, 2, 4, generator=generator, dtype=DTYPE)
    padded = torch.cat([text_tokens, torch.randn(4, 3, 4, generator=generator, dtype=DTYPE)], dim=1)
    mask = torch.tensor([[1, 1, 0, 0, 0]] * 4)
    expected = team_loss(image, text, logit_scale=LOGIT_SCALE, image_tokens=image_tokens, text_tokens=text_tokens)
    loss = team_loss(
        image, text, logit_scale=LOGIT_SCALE, image_tokens=image_tokens, text_tokens=padded, text_attention_mask=mask
    )
    torch.testing.assert_close(loss, expected)


def test_team_refuses_tokens_of_different_widths():
    image, text, _ = random_batch(4, 4)
    with pytest.raises(
        ValueError,
        match=r"`team` alignment needs image tokens \(B, N, C\).*got image tokens "
        r"\(4, 3, 4\), text tokens \(4, 2, 6\)",
    ):
        team_loss(
            image,
            text,
            logit_scale=LOGIT_SCALE,
            image_tokens=torch.randn(4, 3, 4, dtype=DTYPE),
            text_tokens=torch.randn(4, 2, 6, dtype=DTYPE),
        )


# Every method


@pytest.mark.parametrize("method", sorted(ALIGNMENT_LOSSES))
def test_reordering_the_batch_leaves_the_loss_unchanged(method):
    image, text, labels = random_batch()
    order = torch.tensor([3, 5, 0, 2, 1, 4])
    loss = ALIGNMENT_LOSSES[method]
    kwargs = method_kwargs(method)
    torch.testing.assert_close(
        loss(image[order], text[order], labels[order], **kwargs), loss(image, text, labels, **kwargs)
    )


@pytest.mark.parametrize("method", sorted(ALIGNMENT_LOSSES))
def test_gradients_reach_both_modalities(method):
    image, text, labels = random_batch()
    image.requires_grad_(True)
    text.requires_grad_(True)
    ALIGNMENT_LOSSES[method](image, text, labels, **method_kwargs(method)).backward()
    for grad in (image.grad, text.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("method", sorted(ALIGNMENTS_NEEDING_LABELS))
def test_methods_grouping_by_class_refuse_missing_labels(method):
    image, text, _ = random_batch()
    with pytest.raises(ValueError, match=rf"`{method}` alignment needs `labels`: .* Got labels=None\."):
        ALIGNMENT_LOSSES[method](image, text, **method_kwargs(method))


@pytest.mark.parametrize("method", sorted(set(ALIGNMENT_LOSSES) - ALIGNMENTS_NEEDING_LABELS))
def test_the_other_methods_run_without_labels(method):
    image, text, _ = random_batch()
    assert torch.isfinite(ALIGNMENT_LOSSES[method](image, text, **method_kwargs(method)))


@pytest.mark.parametrize("method", sorted(ALIGNMENTS_WITH_CLASS_TARGETS))
def test_optional_labels_make_the_targets_class_aware(method):
    image, text, labels = random_batch()
    loss, kwargs = ALIGNMENT_LOSSES[method], method_kwargs(method)
    assert not torch.isclose(loss(image, text, labels, **kwargs), loss(image, text, **kwargs))


def test_swd_ignores_labels():
    image, text, labels = random_batch()
    kwargs = method_kwargs("swd")
    torch.testing.assert_close(swd_loss(image, text, labels, **kwargs), swd_loss(image, text, **kwargs))


@pytest.mark.parametrize("method", sorted(ALIGNMENT_LOSSES))
def test_shapes_are_checked(method):
    image, text, labels = random_batch()
    with pytest.raises(
        ValueError,
        match=rf"`{method}` alignment needs image and text embeddings of the same shape "
        r"\(B, P\), got \(6, 5\) and \(6, 4\)\.",
    ):
        ALIGNMENT_LOSSES[method](image, text[:, :4], labels, **method_kwargs(method))
    with pytest.raises(ValueError, match=r"needs labels of shape \(6,\) \(class ids\) or \(6, L\) .*got \(5,\)\."):
        ALIGNMENT_LOSSES[method](image, text, labels[:5], **method_kwargs(method))


@pytest.mark.parametrize("method", ["ita", "sdm", "cdd", "ssan", "team"])
def test_multi_hot_rows_are_classes_of_label_sets(method):
    image, text, labels = random_batch()
    # The label sets of rows 0-5 are the classes 0, 1, 0, 2, 1, 0 of `labels`.
    label_sets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 1]])
    loss, kwargs = ALIGNMENT_LOSSES[method], method_kwargs(method)
    torch.testing.assert_close(loss(image, text, label_sets, **kwargs), loss(image, text, labels, **kwargs))


@pytest.mark.parametrize("method", sorted(ALIGNMENT_LOSSES))
def test_the_keywords_of_marnet_0_1_still_work_with_a_future_warning(method):
    image, text, labels = random_batch()
    loss, kwargs = ALIGNMENT_LOSSES[method], method_kwargs(method)
    expected = loss(image_projected_embeds=image, text_projected_embeds=text, labels=labels, **kwargs)
    with pytest.warns(FutureWarning, match=r"\(image_embeds=...\)` is deprecated .* as `image_projected_embeds`"):
        torch.testing.assert_close(
            loss(image_embeds=image, text_projected_embeds=text, labels=labels, **kwargs), expected
        )
    with pytest.warns(FutureWarning, match=r"\(text_embeds=...\)` is deprecated .* as `text_projected_embeds`"):
        torch.testing.assert_close(loss(image, text_embeds=text, labels=labels, **kwargs), expected)
    with pytest.raises(TypeError, match="got both `image_projected_embeds` and its deprecated name `image_embeds`"):
        loss(image_embeds=image, image_projected_embeds=image, text_projected_embeds=text, labels=labels, **kwargs)


def test_image_text_contrastive_loss_takes_the_keywords_of_marnet_0_1_with_a_future_warning():
    image, text, _ = random_batch()
    expected, _ = image_text_contrastive_loss(image, text, LOGIT_SCALE)
    with pytest.warns(FutureWarning, match="image_text_contrastive_loss"):
        loss, _ = image_text_contrastive_loss(image_embeds=image, text_embeds=text, logit_scale=LOGIT_SCALE)
    torch.testing.assert_close(loss, expected)


# DDP


class FakeWorld:
    """`torch.distributed` collectives between threads, one rank per thread, exchanged through shared memory."""

    def __init__(self, world_size):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots = [None] * world_size
        self.local = threading.local()
        self.broadcasts = []

    def get_rank(self):
        return self.local.rank

    def get_world_size(self):
        return self.world_size

    def _exchange(self, tensor):
        """Every rank's copy of `tensor`, in rank order."""
        self.slots[self.local.rank] = tensor.detach().clone()
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values

    def all_gather(self, tensor_list, tensor):
        for output, value in zip(tensor_list, self._exchange(tensor)):
            output.copy_(value)

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM):
        values = torch.stack(self._exchange(tensor))
        tensor.copy_(values.max(dim=0).values if op == dist.ReduceOp.MAX else values.sum(dim=0))

    def broadcast(self, tensor, src):
        value = self._exchange(tensor)[src]
        if self.local.rank == src:
            self.broadcasts.append(value)
        tensor.copy_(value)

    def run(self, function):
        """`function(rank)` on one thread per rank; the results in rank order."""
        results, errors = [None] * self.world_size, []

        def target(rank):
            self.local.rank = rank
            try:
                results[rank] = function(rank)
            except BaseException as error:  # re-raised by the caller once every rank has stopped
                errors.append(error)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


def ddp_inputs(batch_size=8):
    generator = torch.Generator().manual_seed(7)
    return {
        "image": torch.randn(batch_size, 4, generator=generator, dtype=DTYPE),
        "text": torch.randn(batch_size, 4, generator=generator, dtype=DTYPE),
        "labels": torch.tensor([0, 1, 0, 2, 1, 3, 2, 0]),
        "image_tokens": torch.randn(batch_size, 3, 4, generator=generator, dtype=DTYPE),
        "text_tokens": torch.randn(batch_size, 5, 4, generator=generator, dtype=DTYPE),
        "text_attention_mask": (torch.arange(5)[None] < torch.tensor([5, 2, 3, 1, 4, 2, 4, 3])[:, None]).long(),
    }


def run_loss(method, inputs, rows, **kwargs):
    """Loss on `rows` of the inputs and the gradients of its image and text rows (and tokens for TEAM)."""
    leaves = {name: inputs[name][rows].clone().requires_grad_(True) for name in ("image", "text")}
    labels = inputs["labels"][rows]
    if method == "team":
        leaves.update(
            {name: inputs[name][rows].clone().requires_grad_(True) for name in ("image_tokens", "text_tokens")}
        )
        # Rank 1's texts have at most 4 tokens: it passes shorter token tensors, padded to be gathered.
        length = int(inputs["text_attention_mask"][rows].sum(dim=1).max())
        kwargs.update(
            image_tokens=leaves["image_tokens"],
            text_tokens=leaves["text_tokens"][:, :length],
            text_attention_mask=inputs["text_attention_mask"][rows][:, :length],
        )
    loss = ALIGNMENT_LOSSES[method](leaves["image"], leaves["text"], labels, **kwargs)
    loss.backward()
    return loss.detach(), {name: leaf.grad for name, leaf in leaves.items()}


@pytest.mark.parametrize("method", sorted(ALIGNMENT_LOSSES))
def test_gathering_over_two_ranks_reproduces_the_one_process_loss_and_gradient(method, monkeypatch):
    inputs, world = ddp_inputs(), FakeWorld(2)
    for name in ("get_rank", "get_world_size", "all_gather", "all_reduce", "broadcast"):
        monkeypatch.setattr(dist, name, getattr(world, name))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "is_available", lambda: True)
    kwargs = {"logit_scale": LOGIT_SCALE} if method in ALIGNMENTS_WITH_TEMPERATURE else {}
    if method == "swd":
        kwargs["num_projections"] = 6  # drawn on each rank, rank 0's broadcast

    def rank(index):
        torch.manual_seed(100 + index)
        return run_loss(method, inputs, slice(4 * index, 4 * index + 4), **kwargs)

    (loss_0, grads_0), (loss_1, grads_1) = world.run(rank)
    monkeypatch.undo()
    if method == "swd":
        kwargs = {"projections": world.broadcasts[0]}
    loss, grads = run_loss(method, inputs, slice(0, 8), **kwargs)

    # The processes' mean is the one-process loss (each process's loss is, for SWD, CDD and SSAN).
    torch.testing.assert_close((loss_0 + loss_1) / 2, loss)
    if method in {"swd", "cdd", "ssan"}:
        torch.testing.assert_close(loss_0, loss_1)
    # Each process's rows get the sum of both processes' gradients: DDP's average is the one-process gradient.
    for name, grad in grads.items():
        torch.testing.assert_close(torch.cat([grads_0[name], grads_1[name]]) / 2, grad)
