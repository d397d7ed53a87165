"""Training loop: real Fashion-MNIST rows, checkpoints, exact resume, budgets, outputs, phases."""
import json
import math

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from cci_core.generate.gan import GANConfig
from cci_core.generate.image_batches import RowSource
from cci_core.generate.sampling import generate, load_discriminator, load_generator
from cci_core.generate.training_loop import TrainConfig, train_generator
from cci_core.generate.vae import VAEConfig
from cci_core.ingest.idx import read_idx

FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def fashion():
    images = read_idx(f"{FMNIST}/t10k-images-idx3-ubyte.gz")[:400, :, :, None]
    labels = read_idx(f"{FMNIST}/t10k-labels-idx1-ubyte.gz")[:400].astype(np.int64)
    return images, labels


def tiny_gan(**kw) -> GANConfig:
    return GANConfig(**{"z_dim": 8, "g_width": 8, "d_width": 8, "d_features": 16, **kw})


def tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 16, "checkpoint_every": 3, "n_samples": 8,
                          "seed": 3, "device": "cpu", **kw})


def final_state(out_dir):
    ckpts = sorted((out_dir / "checkpoints").glob("step-*"))
    return load_file(str(ckpts[-1] / "state.safetensors"))


def test_gan_trains_writes_outputs_and_loads_without_pickle(fashion, tmp_path):
    images, _ = fashion
    calls = []
    res = train_generator(images, tmp_path, tiny_gan(), tcfg(progress_every=2),
                          progress=lambda s, t, logs: calls.append((s, t, dict(logs))))
    assert res["steps"] == 6 and res["resumed_from"] is None and res["n_train"] == 400
    assert [c[0] for c in calls] == [2, 4, 6] and all(c[1] == 6 for c in calls)
    assert set(calls[-1][2]) == {"loss_d", "loss_g"}
    assert [p.name for p in res["samples"]] == ["step-0000003.png", "step-0000006.png"]
    assert res["loss_curve"].stat().st_size > 0 and res["generator"].suffix == ".safetensors"
    assert json.loads((tmp_path / "generator.json").read_text())["kind"] == "gan"

    G = load_generator(tmp_path, device="cpu")
    init = type(G)(G.cfg)
    tensors = load_file(str(res["generator"]))  # plain safetensors, no pickle involved
    changed = [k for k in tensors if not torch.equal(tensors[k], init.state_dict()[k])]
    assert any("blocks.0.up.weight" in k for k in changed)  # training moved the weights
    out = generate(G, 10, seed=1)
    assert out.shape == (10, 28, 28, 1) and out.dtype == np.uint8
    assert np.array_equal(out, generate(G, 10, seed=1, batch_size=3))
    assert not np.array_equal(out, generate(G, 10, seed=2))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(fashion, tmp_path):
    images, labels = fashion
    cfg = tiny_gan(n_classes=10, spectral_norm=True)
    train_generator(images, tmp_path / "whole", cfg, tcfg(ema_decay=0.9), labels=labels)
    first = train_generator(images, tmp_path / "split", cfg, tcfg(ema_decay=0.9, steps=3),
                            labels=labels)
    assert first["steps"] == 3
    second = train_generator(images, tmp_path / "split", cfg, tcfg(ema_decay=0.9), labels=labels)
    assert second["resumed_from"] == 3 and second["steps"] == 6
    whole, split = final_state(tmp_path / "whole"), final_state(tmp_path / "split")
    assert whole.keys() == split.keys()
    assert any(k.startswith("G_ema.") for k in whole) and any(".state." in k for k in whole)
    for k in whole:
        assert torch.equal(whole[k], split[k]), k
    # Another seed gives other weights, so the equality above is not vacuous.
    train_generator(images, tmp_path / "other", cfg, tcfg(ema_decay=0.9, seed=4), labels=labels)
    other = final_state(tmp_path / "other")
    assert not torch.equal(whole["G.blocks.0.up.weight"], other["G.blocks.0.up.weight"])
    # The history survives the resume: the loss curve covers all six steps.
    assert split["history.loss_d"].shape == (6,)


def test_conditioning_labels_can_change_between_phases(fashion, tmp_path):
    images, labels = fashion
    cfg = tiny_gan(n_classes=10, d_condition="projection")
    for d in ("a", "b"):
        train_generator(images, tmp_path / d, cfg, tcfg(steps=3), labels=labels)
    relabelled = (labels + 1) % 10
    train_generator(images, tmp_path / "a", cfg, tcfg(), labels=labels)
    res = train_generator(images, tmp_path / "b", cfg, tcfg(), labels=relabelled)
    assert res["resumed_from"] == 3
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert not torch.equal(a["D.embed.weight"], b["D.embed.weight"])
    # Phase 2 of a self-conditioned run would re-cluster the discriminator's features.
    D = load_discriminator(tmp_path / "b")
    torch.testing.assert_close(D.embed.weight, b["D.embed.weight"])
    assert D.features(torch.zeros(3, 1, 28, 28)).shape == (3, cfg.d_features)
    out = generate(load_generator(tmp_path / "b"), 4, labels=[0, 1, 2, 9])
    assert out.shape == (4, 28, 28, 1)
    with pytest.raises(ValueError, match="labels"):
        generate(load_generator(tmp_path / "b"), 4)


def test_weights_of_another_architecture_are_a_clear_error(fashion, tmp_path):
    images, _ = fashion
    train_generator(images, tmp_path, tiny_gan(), tcfg(steps=3))
    path = tmp_path / "generator.safetensors"
    tensors = load_file(str(path))
    from safetensors.torch import save_file
    save_file({k.replace("blocks.0.up", "net.0"): v for k, v in tensors.items()}, str(path))  # an older layout
    with pytest.raises(ValueError, match=r"generator.safetensors does not match the Generator.*cci train"):
        load_generator(tmp_path, "cpu")


def test_mode_seeking_adds_its_term_to_the_generator_loss(fashion, tmp_path):
    images, labels = fashion
    cfg = tiny_gan(n_classes=10)
    plain = train_generator(images, tmp_path / "plain", cfg, tcfg(steps=3), labels=labels)
    seeking = train_generator(images, tmp_path / "ms", cfg, tcfg(steps=3, mode_seeking=1.0), labels=labels)
    assert all(math.isfinite(v) for v in seeking["losses"].values())
    # 1 / (|G(z1) - G(z2)| / |z1 - z2|) is large for a fresh generator, whose images barely move with z
    assert seeking["losses"]["loss_g"] > plain["losses"]["loss_g"] + 1.0
    with pytest.raises(ValueError, match="mode_seeking"):
        TrainConfig(mode_seeking=-0.5)
    with pytest.raises(ValueError, match="batch_size=1 must be >= 2"):  # a pair is needed
        TrainConfig(mode_seeking=1.0, batch_size=1)
    with pytest.raises(ValueError, match="GAN generators only"):
        train_generator(images, tmp_path / "vae", VAEConfig(z_dim=4, width=8), tcfg(mode_seeking=1.0))


def test_vae_learns_from_cluster_rows_of_a_zarr_corpus_read_in_windows(fashion, tmp_path):
    images, labels = fashion
    arr = zarr.create_array(store=str(tmp_path / "images.zarr"), shape=(500, 28, 28, 1),
                            chunks=(64, 28, 28, 1), dtype="uint8")
    arr[:400] = images           # rows 400..499 are allocated but not committed
    rows = np.flatnonzero(labels == 7)  # one "cluster": sneakers
    res = train_generator(arr, tmp_path / "vae", VAEConfig(z_dim=4, width=8),
                          tcfg(steps=40, checkpoint_every=40, max_memory_bytes=20 * 784),
                          rows=rows, n_rows=400)
    assert res["kind"] == "vae" and res["n_train"] == rows.size
    hist = final_state(tmp_path / "vae")["history.loss"]
    assert hist[-5:].mean() < 0.8 * hist[:5].mean()
    assert generate(load_generator(tmp_path / "vae"), 5).shape == (5, 28, 28, 1)


def test_row_source_windows_stay_within_rows_and_committed_range(fashion):
    images, labels = fashion
    rows = np.arange(0, 300, 3)
    src = RowSource(images, rows, n_rows=300, labels=labels[rows], batch_size=4,
                    max_bytes=10 * 784, seed=0)
    assert src.window == 10 and src.refresh_every == 2
    gen = torch.Generator().manual_seed(0)
    allowed = {images[r].tobytes(): labels[r] for r in rows}
    for step in range(20):
        xb, yb = src.batch(4, gen, step)
        for x, y in zip(xb, yb):
            assert allowed[x.tobytes()] == y
    with pytest.raises(ValueError, match="committed"):
        RowSource(images, [5, 350], n_rows=300)
    with pytest.raises(ValueError, match="one cluster id per training row"):
        RowSource(images, [1, 2], labels=[0])


def test_time_budget_stops_early_and_bad_input_is_rejected(fashion, tmp_path):
    images, labels = fashion
    res = train_generator(images, tmp_path / "t", tiny_gan(),
                          tcfg(steps=10 ** 6, seconds=0.5, checkpoint_every=10 ** 5))
    assert 0 < res["steps"] < 10 ** 6 and (tmp_path / "t" / "generator.safetensors").exists()
    with pytest.raises(ValueError, match="n_classes"):
        train_generator(images, tmp_path / "u", tiny_gan(n_classes=10), tcfg())
    with pytest.raises(ValueError, match="image_size"):
        train_generator(images, tmp_path / "u", tiny_gan(image_size=32), tcfg())
    with pytest.raises(ValueError, match="fresh out_dir"):
        train_generator(images, tmp_path / "t", tiny_gan(z_dim=9), tcfg())
