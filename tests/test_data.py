"""Built-in real datasets, fixed splits, resizing to the model, and ImageFolder directories."""

import numpy as np
import pytest
import torch
from helpers import tiny

from vitcompress.data import DataConfig, calibration_loader, load_builtin, make_dataset, split_indices
from vitcompress.errors import VitCompressError


@pytest.mark.parametrize("name,n,hw", [("digits", 1797, 8), ("mnist10k", 10000, 28)])
def test_builtin_datasets_and_fixed_split(name, n, hw):
    images, labels = load_builtin(name)
    assert images.shape == (n, hw, hw) and labels.shape == (n,)
    assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.9
    assert sorted(np.unique(labels)) == list(range(10))
    tr, va = split_indices(labels, "train"), split_indices(labels, "val")
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == n
    for c in range(10):  # 80% of every class goes to train, in file order
        idx = np.flatnonzero(labels == c)
        cut = int(round(0.8 * len(idx)))
        assert set(idx[:cut]) <= set(tr) and set(idx[cut:]) <= set(va)


def test_mnist10k_class_counts_match_provenance():
    _, labels = load_builtin("mnist10k")
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def test_images_are_resized_and_normalised_for_the_model():
    model = tiny("vit")
    cfg = DataConfig.from_model(model)
    ds = make_dataset("digits", cfg, "val")
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    raw = torch.from_numpy(load_builtin("digits")[0][split_indices(load_builtin("digits")[1], "val")[0]])
    # background pixels (0) map to -mean/std
    assert x[0].min().item() == pytest.approx(-cfg.mean[0] / cfg.std[0], abs=1e-5)
    assert raw.max() > 0


def test_calibration_loader_is_seeded():
    model = tiny("vit")
    a = torch.cat([x for x, _ in calibration_loader("mnist10k", model, 16, 8, seed=3)])
    b = torch.cat([x for x, _ in calibration_loader("mnist10k", model, 16, 8, seed=3)])
    c = torch.cat([x for x, _ in calibration_loader("mnist10k", model, 16, 8, seed=4)])
    assert a.shape == (16, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    model = tiny("vit")
    ds = make_dataset(str(tmp_path), DataConfig.from_model(model), "train")
    assert len(ds) == 6 and ds.num_classes == 2
    x, y = ds[0]
    assert x.shape == (3, 32, 32)
    loader = calibration_loader(str(tmp_path), model, 4, 2)
    assert sum(len(x) for x, _ in loader) == 4


def test_unknown_data_is_an_error():
    with pytest.raises(VitCompressError, match="neither a built-in dataset"):
        make_dataset("cifar", DataConfig((32, 32), 3, (0.5,) * 3, (0.5,) * 3))
