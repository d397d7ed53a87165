"""The CCI classifier model: shapes for every supported input, validation, weights I/O."""
import numpy as np
import pytest
import torch

from cci_core.common.torch_data import CorpusImages, augment, to_tensor
from cci_core.refine.cnn import CNN, CNNConfig
from cci_core.store.weights import load_weights, save_weights


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 64), (1, 64)])
def test_shapes_for_every_supported_input(channels, size):
    torch.manual_seed(0)
    model = CNN(CNNConfig(in_channels=channels, image_height=size, image_width=size, n_classes=7, width=4,
                          depth=3, embed_dim=12)).eval()
    x = torch.rand(5, channels, size, size)
    z = model.embed(x)
    assert model(x).shape == (5, 7)
    assert z.shape == (5, 12)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("bad", [dict(in_channels=2), dict(image_height=0), dict(image_width=5000),
                                 dict(n_classes=1), dict(depth=0), dict(depth=7), dict(depth=5, max_side=16)])
def test_bad_config_is_a_clear_value_error(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CNNConfig(**bad)


def test_weights_round_trip_without_pickle(tmp_path):
    cfg = CNNConfig(width=4, embed_dim=8)
    model = CNN(cfg).eval()
    save_weights(tmp_path, model.state_dict(), cfg, name="classifier")
    assert (tmp_path / "classifier.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # no pickle
    tensors, config = load_weights(tmp_path, "classifier")
    again = CNN(CNNConfig.from_dict(config)).eval()
    again.load_state_dict(tensors)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), again(x))


def test_dataset_reads_batches_from_zarr_without_cache(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    arr = zarr.create_array(tmp_path / "images.zarr", shape=(64, 28, 28, 1), chunks=(16, 28, 28, 1),
                            dtype="uint8")
    arr[:50] = imgs
    ds = CorpusImages(arr, 50, cache_bytes=0)
    assert ds._cache is None and len(ds) == 50
    rows = np.array([33, 2, 17, 2])
    assert torch.equal(ds.batch(rows), to_tensor(imgs[rows]))
    starts = [s for s, b in ds.iter_batches(16)]
    assert starts == [0, 16, 32, 48]
    with pytest.raises(ValueError, match="row index"):
        ds.batch([50])  # beyond the committed rows
    with pytest.raises(ValueError, match="n_rows"):
        CorpusImages(arr, 65)


def test_augment_is_seeded_and_changes_images():
    x = torch.rand(8, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(1), erase=0.2)
    b = augment(x, torch.Generator().manual_seed(1), erase=0.2)
    c = augment(x, torch.Generator().manual_seed(2), erase=0.2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)
