"""DCGAN generator/discriminator: shapes for every size and channel count, conditioning, losses."""
import pytest
import torch

from cci_core.generate.gan import Discriminator, GANConfig, Generator, d_loss, g_loss


def small(**kw) -> GANConfig:
    return GANConfig(**{"z_dim": 8, "g_width": 8, "d_width": 8, "d_features": 16, **kw})


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_shapes_for_every_size_and_channel_count(size, channels, spectral_norm):
    cfg = small(image_size=size, channels=channels, spectral_norm=spectral_norm)
    G, D = Generator(cfg), Discriminator(cfg)
    x = G(torch.randn(5, cfg.z_dim))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (5,)
    assert D.features(x).shape == (5, cfg.d_features)
    has_sn = any("parametrizations" in name for name, _ in D.named_parameters())
    assert has_sn == spectral_norm
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == (not spectral_norm)


def test_conditional_generator_and_projection_discriminator_use_the_label():
    cfg = small(n_classes=4, spectral_norm=True, d_condition="projection")
    G, D = Generator(cfg).eval(), Discriminator(cfg).eval()
    z = torch.randn(3, cfg.z_dim).repeat(2, 1)
    y = torch.tensor([0, 1, 2, 3, 3, 3])
    x = G(z, y)
    assert x.shape == (6, 1, 28, 28)
    assert not torch.allclose(x[0], x[3])           # same z, different cluster -> different image
    same = torch.full((6,), 2)
    logits = D(x, y)
    assert not torch.allclose(logits, D(x, same))   # the projection term depends on y
    # The projection discriminator is w.phi(x) + embed(y).phi(x) on the exposed features.
    h = D.features(x)
    manual = D.head(h).squeeze(1) + (D.embed(y) * h).sum(1)
    torch.testing.assert_close(logits, manual)


def test_concat_discriminator_sees_the_label_as_input_planes():
    torch.manual_seed(0)
    cfg = small(n_classes=4)  # d_condition="concat" is the default
    G, D = Generator(cfg).eval(), Discriminator(cfg).eval()
    assert D.embed is None and D.body[0].in_channels == cfg.channels + 4
    y = torch.tensor([0, 1, 2, 3])
    x = G(torch.randn(4, cfg.z_dim), y)
    logits = D(x, y)
    assert not torch.allclose(logits, D(x, torch.full((4,), 2)))   # the planes carry y
    torch.testing.assert_close(logits, D.head(D.features(x, y)).squeeze(1))
    with pytest.raises(ValueError, match="d_condition='concat'"):
        D.features(x)  # its features depend on y: a clear error, not a shape error
    # conditional batch norm: the per-class gain and bias start at 1 and 0, and training can move them
    norm = G.blocks[0]["norm"]
    assert torch.equal(norm.gain.weight, torch.ones_like(norm.gain.weight))
    assert norm.gain.weight.requires_grad and norm.bias.weight.requires_grad


def test_label_errors_are_clear():
    with pytest.raises(ValueError, match="conditional"):
        Generator(small(n_classes=3))(torch.randn(2, 8))
    with pytest.raises(ValueError, match="unconditional"):
        Discriminator(small())(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="image_size=48"):
        GANConfig(image_size=48)
    with pytest.raises(ValueError, match="loss='wgan'"):
        GANConfig(loss="wgan")
    with pytest.raises(ValueError, match="d_condition='both'"):
        GANConfig(d_condition="both")


@pytest.mark.parametrize("loss", ["hinge", "ns"])
def test_losses_prefer_a_discriminator_that_separates(loss):
    good = d_loss(torch.full((8,), 3.0), torch.full((8,), -3.0), loss)
    bad = d_loss(torch.full((8,), -3.0), torch.full((8,), 3.0), loss)
    assert good < bad
    assert g_loss(torch.full((8,), 3.0), loss) < g_loss(torch.full((8,), -3.0), loss)


def test_a_few_steps_teach_the_discriminator():
    torch.manual_seed(0)
    cfg = small()
    G, D = Generator(cfg), Discriminator(cfg)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    real = torch.zeros(16, 1, 28, 28)
    real[:, :, 7:21, 7:21] = 1.0  # a bright square on black
    losses = []
    for _ in range(15):
        with torch.no_grad():
            fake = G(torch.randn(16, cfg.z_dim))
        loss = d_loss(D(real), D(fake), cfg.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
