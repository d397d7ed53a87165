"""A cluster's GAN cut out of a conditional GAN computes exactly what the conditional GAN does for that cluster."""
from __future__ import annotations

import pytest
import torch

from cci_core.generate.gan import Discriminator, GANConfig, Generator
from cci_core.generate.specialise import specialise, specialised_config


def _trained_looking(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (batch-norm statistics and gains too), so no term is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.dtype.is_floating_point]:
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)


@pytest.mark.parametrize("image_size,channels,d_condition", [(28, 1, "concat"), (32, 3, "projection")])
def test_specialised_gan_equals_the_conditional_gan_for_its_cluster(image_size, channels, d_condition):
    cfg = GANConfig(image_size=image_size, channels=channels, z_dim=8, g_width=4, d_width=4, d_features=8,
                    n_classes=5, embed_dim=3, d_condition=d_condition)
    G, D = Generator(cfg).eval(), Discriminator(cfg).eval()
    _trained_looking(G, 0)
    _trained_looking(D, 1)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    x = torch.rand(6, channels, image_size, image_size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for k in (0, 3):
        g, d = specialise(G, D, k)
        g.eval(), d.eval()
        assert g.cfg == specialised_config(cfg) and g.cfg.n_classes == 0 and g.cfg.bias_map
        y = torch.full((6,), k)
        with torch.no_grad():
            torch.testing.assert_close(g(z), G(z, y), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(d(x), D(x, y), rtol=1e-5, atol=1e-5)
            assert not torch.allclose(G(z, torch.full((6,), 1)), g(z), atol=1e-4)  # it is cluster k's, not any
        assert sum(p.numel() for p in g.parameters()) < sum(p.numel() for p in G.parameters())


def test_only_a_conditional_gan_without_spectral_norm_can_be_specialised():
    with pytest.raises(ValueError, match="only a cluster-conditional GAN"):
        specialised_config(GANConfig())
    with pytest.raises(ValueError, match="spectral"):
        specialised_config(GANConfig(n_classes=3, spectral_norm=True))
    cfg = GANConfig(n_classes=3, g_width=4, d_width=4, d_features=8)
    with pytest.raises(ValueError, match="cluster 3 is not one of"):
        specialise(Generator(cfg), Discriminator(cfg), 3)
    with pytest.raises(ValueError, match="bias_map stands for a fixed cluster"):
        GANConfig(n_classes=3, bias_map=True)


def test_a_cluster_model_starts_from_the_conditional_shared_start(tmp_path):
    import numpy as np

    from cci_core.generate.training_loop import TrainConfig, train_generator
    from cci_core.store.weights import load_weights
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(40) % 4
    cfg = GANConfig(z_dim=8, g_width=4, d_width=4, d_features=8, n_classes=4, embed_dim=3)
    train_generator(images, tmp_path / "shared", cfg, TrainConfig(steps=3, batch_size=8, device="cpu"), labels=labels)
    one = specialised_config(cfg)
    tiny = TrainConfig(steps=1, batch_size=8, lr=1e-12, device="cpu", init_from=str(tmp_path / "shared"),
                       init_cluster=2)
    train_generator(images, tmp_path / "c2", one, tiny, rows=np.flatnonzero(labels == 2))
    start, _ = load_weights(tmp_path / "shared" / "checkpoints" / "step-0000003", "state")
    G, D = Generator(cfg), Discriminator(cfg)
    G.load_state_dict({k[2:]: v for k, v in start.items() if k.startswith("G.")})
    D.load_state_dict({k[2:]: v for k, v in start.items() if k.startswith("D.")})
    g, d = specialise(G, D, 2)
    got, _ = load_weights(tmp_path / "c2" / "checkpoints" / "step-0000001", "state")
    for prefix, ref in (("G.", g), ("D.", d)):
        for name, p in ref.named_parameters():
            torch.testing.assert_close(got[prefix + name], p.detach(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="say which cluster"):
        train_generator(images, tmp_path / "c-none", one, TrainConfig(steps=1, batch_size=8, device="cpu",
                                                                      init_from=str(tmp_path / "shared")))
    with pytest.raises(ValueError, match="does not specialise to"):
        train_generator(images, tmp_path / "c-wide", GANConfig(z_dim=8, g_width=8, d_width=4, d_features=8, bias_map=True),
                        TrainConfig(steps=1, batch_size=8, device="cpu", init_from=str(tmp_path / "shared"),
                                    init_cluster=1))
