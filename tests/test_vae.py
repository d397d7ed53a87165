"""Convolutional VAE: shapes for every size and channel count, ELBO terms, a few steps learn."""
import pytest
import torch

from cci_core.generate.vae import VAE, VAEConfig


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_size_and_channel_count(size, channels):
    cfg = VAEConfig(image_size=size, channels=channels, z_dim=6, width=8)
    vae = VAE(cfg)
    x = torch.rand(4, channels, size, size) * 2 - 1
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (4, 6)
    assert vae.decode(mu).shape == x.shape
    s = vae.sample(3, torch.Generator().manual_seed(0))
    assert s.shape == (3, channels, size, size) and s.min() >= -1 and s.max() <= 1
    parts = vae.loss(x)
    assert parts["kl"] >= 0 and parts["recon"] > 0
    torch.testing.assert_close(parts["loss"], parts["recon"] + cfg.beta * parts["kl"])


def test_sampling_is_reproducible_with_a_seeded_generator():
    vae = VAE(VAEConfig(z_dim=4, width=8)).eval()
    a = vae.sample(2, torch.Generator().manual_seed(5))
    b = vae.sample(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_a_few_steps_reduce_the_negative_elbo():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(z_dim=4, width=8))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    x = -torch.ones(16, 1, 28, 28)
    x[:, :, 4:24, 10:18] = 1.0  # a bright bar
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        loss = vae.loss(x, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="channels=2"):
        VAEConfig(channels=2)
    with pytest.raises(ValueError, match="beta=-1"):
        VAEConfig(beta=-1)
