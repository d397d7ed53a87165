"""One cluster's own GAN cut out of a cluster-conditional GAN: the shared start of per-cluster models.

A conditional GAN trained on the pooled partitions learns what the clusters share (strokes, shapes,
the background) in one set of weights. :func:`specialise` restricts it to cluster ``k`` exactly:

- generator: the class embedding's share of the first layer, ``embed(k)`` through its weights, is a
  constant (channels, base, base) map, kept as ``bias_map``; each conditional batch norm's row ``k``
  becomes a plain batch norm's gain and bias;
- discriminator (``d_condition="concat"``): the one-hot plane of ``k`` through the first conv
  (zero padding included) is again a constant map, kept as a :class:`~cci_core.generate.gan.BiasMap`;
  the other planes' weights are dropped. (``"projection"``: ``embed(k)`` is added to the head.)

The result is an unconditional GAN (``n_classes=0``, ``bias_map=True``) whose ``G(z)`` and ``D(x)``
equal the conditional ``G(z, k)`` and ``D(x, k)`` (tested), with far fewer parameters than the
conditional pair; the per-cluster task then fine-tunes it on cluster ``k``'s rows alone.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from cci_core.generate.gan import BiasMap, ConditionalBatchNorm2d, Discriminator, GANConfig, Generator


def specialised_config(cfg: GANConfig) -> GANConfig:
    """The configuration of one cluster's GAN cut out of a conditional GAN of configuration ``cfg``."""
    if not cfg.n_classes:
        raise ValueError("only a cluster-conditional GAN (n_classes > 0) can be specialised to one cluster")
    if cfg.spectral_norm:
        raise ValueError("a spectrally normalised GAN cannot be specialised exactly (its weights are "
                         "normalised as a whole); train the shared start with spectral_norm=False")
    return replace(cfg, n_classes=0, bias_map=True)


@torch.no_grad()
def specialise(G: Generator, D: Discriminator, k: int) -> tuple[Generator, Discriminator]:
    """New G and D for cluster ``k`` alone, equal to ``G(., k)`` and ``D(., k)``, on the same device."""
    cfg = G.cfg
    if not 0 <= k < cfg.n_classes:
        raise ValueError(f"cluster {k} is not one of the conditional GAN's {cfg.n_classes} clusters")
    one = specialised_config(cfg)
    device = next(G.parameters()).device
    g, d = Generator(one).to(device), Discriminator(one).to(device)
    _specialise_generator(G, g, k)
    _specialise_discriminator(D, d, k)
    return g, d


def _specialise_generator(G: Generator, g: Generator, k: int) -> None:
    z_dim = G.cfg.z_dim
    for src, dst in zip(G.blocks, g.blocks):
        w = src["up"].weight
        if dst is g.blocks[0]:
            dst["up"].weight.copy_(w[:z_dim])
            # ConvTranspose2d of a 1x1 input: input channel i adds w[i] (out, base, base) times its value
            g.bias_map.copy_(torch.einsum("e,eohw->ohw", G.embed.weight[k], w[z_dim:]))
        else:
            dst["up"].weight.copy_(w)
        _batch_norm_row(src["norm"], dst["norm"], k)
    g.out.load_state_dict(G.out.state_dict())


def _batch_norm_row(src: ConditionalBatchNorm2d, dst: nn.BatchNorm2d, k: int) -> None:
    dst.weight.copy_(src.gain.weight[k])
    dst.bias.copy_(src.bias.weight[k])
    dst.running_mean.copy_(src.bn.running_mean)
    dst.running_var.copy_(src.bn.running_var)
    dst.num_batches_tracked.copy_(src.bn.num_batches_tracked)


def _specialise_discriminator(D: Discriminator, d: Discriminator, k: int) -> None:
    cfg, c = D.cfg, D.cfg.channels
    src_body = list(D.body)
    dst_body = [m for m in d.body if not isinstance(m, BiasMap)]
    conv, bias_map = d.body[0], d.body[1]
    first = src_body[0]
    w = first.weight  # (out, C + K, 4, 4) for a concat D, (out, C, 4, 4) otherwise
    if D.concat:
        plane = torch.ones(1, 1, cfg.image_size, cfg.image_size, device=w.device, dtype=w.dtype)
        bias_map.map.copy_(nn.functional.conv2d(plane, w[:, c + k:c + k + 1], stride=2, padding=1)[0])
        conv.weight.copy_(w[:, :c])
    else:
        conv.weight.copy_(w)
    conv.bias.copy_(first.bias)
    for src, dst in zip(src_body[1:], dst_body[1:]):
        dst.load_state_dict(src.state_dict())
    d.head.load_state_dict(D.head.state_dict())
    if D.embed is not None:  # projection: D(x, k) = (w + embed(k)) . phi(x) + b
        d.head.weight.add_(D.embed.weight[k][None])
