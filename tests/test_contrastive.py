"""Augmentation, contrastive pre-training, neighbour mining, SCAN heads and confident
self-labelling on small constructed data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.common.torch_data import CorpusImages
from cci_core.refine.augment import STRONG, WEAK, AugmentConfig, random_view
from cci_core.refine.cnn import CNN, CNNConfig
from cci_core.refine.contrastive import nt_xent, pretrain_contrastive
from cci_core.refine.scan import confident_rows, mine_neighbours, scan_loss, self_label_loss, self_label_round, train_scan_heads


def _images(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28, 1), np.uint8)
    for i in range(n):  # a bright rectangle per image, different places and sizes
        r, c = rng.integers(4, 14, 2)
        x[i, r:r + rng.integers(6, 12), c:c + rng.integers(6, 12)] = rng.integers(120, 255)
    return x


@pytest.mark.parametrize("cfg", [WEAK, STRONG, AugmentConfig(erase=0.3, erase_p=1.0)])
def test_views_keep_shape_range_and_are_deterministic(cfg):
    x = torch.from_numpy(_images(16)).permute(0, 3, 1, 2).float() / 255
    a = random_view(x, torch.Generator().manual_seed(3), cfg)
    b = random_view(x, torch.Generator().manual_seed(3), cfg)
    c = random_view(x, torch.Generator().manual_seed(4), cfg)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_identity_view_and_flip_only():
    x = torch.from_numpy(_images(8)).permute(0, 3, 1, 2).float() / 255
    off = dict(crop_area=(1.0, 1.0), aspect=1.0, rotate=0.0, brightness=0.0, contrast=0.0,
               jitter_p=0.0, blur_p=0.0)
    same = random_view(x, torch.Generator().manual_seed(0), AugmentConfig(flip=False, **off))
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_view(x, torch.Generator().manual_seed(0), AugmentConfig(flip=True, **off))
    mirrored = [torch.allclose(f, torch.flip(o, [-1]), atol=1e-5) for f, o in zip(flipped, x)]
    kept = [torch.allclose(f, o, atol=1e-5) for f, o in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_crops_smaller_than_sixty_percent_are_refused():
    with pytest.raises(ValueError, match="crop_area"):
        AugmentConfig(crop_area=(0.2, 1.0))


def test_nt_xent_prefers_matching_views():
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    assert nt_xent(z, z + 0.01 * noise) < nt_xent(z, noise)


def test_contrastive_pretraining_is_deterministic_and_learns():
    data = CorpusImages(_images(64))

    lines = []

    def run():
        torch.manual_seed(0)
        model = CNN(CNNConfig(width=4, depth=2, embed_dim=8))
        stats = pretrain_contrastive(model, data, epochs=2, batch_size=16, seed=5,
                                     device=torch.device("cpu"), log=lines.append, log_every=4)
        return model, stats

    (m1, s1), (m2, _) = run(), run()
    assert s1["cl_steps"] == 8 and s1["cl_images_per_s"] > 0 and np.isfinite(s1["cl_loss"])
    assert len(lines) == 4 and lines[1].startswith("contrastive step 8/8: loss ")
    assert "images/s" in lines[0] and lines[1].endswith("~0s left")
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    head = CNN(CNNConfig(width=4, depth=2, embed_dim=8)).head  # the head is left alone
    assert m1.head.weight.shape == head.weight.shape


def test_neighbours_on_a_constructed_embedding():
    # points on a circle at distinct angles: the nearest by cosine are the adjacent angles
    angles = np.sort(np.random.default_rng(0).uniform(0, 2 * np.pi, 50))  # no ties
    Z = np.stack([np.cos(angles), np.sin(angles)], 1) * np.linspace(1, 3, 50)[:, None]
    nb = mine_neighbours(Z, k=4, block=7)
    gap = np.abs(angles[:, None] - angles[None])
    gap = np.minimum(gap, 2 * np.pi - gap)
    np.fill_diagonal(gap, np.inf)
    assert np.array_equal(nb, np.argsort(gap, 1, kind="stable")[:, :4])
    assert not (nb == np.arange(50)[:, None]).any()
    with pytest.raises(ValueError):
        mine_neighbours(Z, k=50)


def test_scan_heads_recover_neighbour_consistent_groups():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 60)
    H = np.maximum(np.eye(3)[truth] * 3 + rng.normal(0, 0.5, (180, 3)), 0)
    nb = mine_neighbours(H, k=5)
    head, stats = train_scan_heads(H, nb, 3, n_heads=2, epochs=40, batch_size=60, seed=0)
    pred = head(torch.from_numpy(H).float()).argmax(1).numpy()
    assert cluster_acc(truth, pred) > 0.95
    assert stats["scan_head"] in (0, 1) and len(stats["scan_head_losses"]) == 2
    # the entropy term: a collapsed prediction scores worse than a balanced one
    one = torch.zeros(6, 3)
    one[:, 0] = 10
    spread = torch.eye(3).repeat(2, 1) * 10
    assert scan_loss(spread, spread)[0] < scan_loss(one, one)[0]


def test_self_label_loss_never_trains_below_threshold():
    weak = torch.tensor([[5.0, 0, 0], [0.5, 0, 0], [0, 0, 6.0], [0, 0.2, 0]])
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, mask, target = self_label_loss(weak, strong, threshold=0.9)
    loss.backward()
    assert mask.tolist() == [True, False, True, False]
    assert target[mask].tolist() == [0, 2]
    assert torch.all(strong.grad[~mask] == 0) and torch.all(strong.grad[mask].abs().sum(1) > 0)
    none, mask, _ = self_label_loss(weak, strong, threshold=0.999999)
    assert not mask.any() and float(none.detach()) == 0.0


class _Recorded(CorpusImages):
    """The corpus, remembering which rows training read."""

    def __init__(self, images):
        super().__init__(images)
        self.read = []

    def batch(self, rows):
        self.read.extend(np.asarray(rows).tolist())
        return super().batch(rows)


def test_self_label_round_reads_only_confident_rows():
    data = _Recorded(_images(40))
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3) * 0.3, 40).astype(np.float32)
    sure = probs.max(1) >= 0.9
    assert 0 < sure.sum() < 40
    pools = confident_rows(probs, 0.9)
    assert sorted(np.concatenate(pools).tolist()) == np.flatnonzero(sure).tolist()
    torch.manual_seed(0)
    model = CNN(CNNConfig(width=4, depth=2, embed_dim=8, n_classes=3))
    centres = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    bn = model.trunk[0][1]
    before = bn.running_mean.clone()
    stats = self_label_round(model, data, probs, steps=3, threshold=0.9, centres=centres,
                             batch_size=8, seed=0, device=torch.device("cpu"))
    assert set(data.read) <= set(np.flatnonzero(sure).tolist())
    assert stats["sl_pool"] == int(sure.sum()) and 0 <= stats["sl_kept"] <= 1
    assert torch.equal(bn.running_mean, before)  # batch-norm statistics frozen by default
    self_label_round(model, data, probs, steps=1, threshold=0.9, freeze_bn=False,
                     batch_size=8, seed=0, device=torch.device("cpu"))
    assert not torch.equal(bn.running_mean, before)
    with pytest.raises(ValueError, match="threshold"):
        self_label_round(model, data, np.full((40, 3), 1 / 3, np.float32), steps=1,
                         threshold=0.9, device=torch.device("cpu"))
