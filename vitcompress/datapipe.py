"""Training data: datasets with augmentation, deterministic (optionally sharded) loaders, mixup.

ImageFolder directories go through timm's transform factory (``timm.data.create_transform``:
random-resized crop, flip, colour jitter, RandAugment via ``auto_augment='rand-m9-mstd0.5'``,
random erasing); mixup/cutmix use ``timm.data.Mixup``. The built-in datasets (``digits``,
``mnist10k``) get a light augmentation suited to small grayscale digits: a random shift of up
to ``shift`` pixels (pad and crop, no flips). Their train/val splits are the fixed per-class
80/20 split of ``vitcompress.data``.

Data order is a pure function of ``(seed, epoch)``: each epoch's permutation is drawn from a
generator seeded with ``seed + epoch`` and sharded across ranks the way ``DistributedSampler``
does, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import setting
from .data import BUILTIN, DataConfig, image_folder, image_transform, make_dataset
from .errors import VitCompressError


@dataclass
class AugConfig:
    """Augmentation options (timm names). ``None``/0 switches an option off."""

    shift: int = setting(2, "Built-in datasets: random shift in pixels.", ge=0, le=64)
    auto_augment: str | None = setting(None, "ImageFolder: timm auto-augment, e.g. rand-m9-mstd0.5.")
    hflip: float = setting(0.5, "ImageFolder: horizontal flip probability.", ge=0, le=1)
    color_jitter: float = setting(0.4, "ImageFolder: colour jitter (0 = off).", ge=0, le=10)
    re_prob: float = setting(0.0, "ImageFolder: random erasing probability.", ge=0, le=1)
    mixup: float = setting(0.0, "Mixup alpha (0 = off).", ge=0, le=100)
    cutmix: float = setting(0.0, "CutMix alpha (0 = off).", ge=0, le=100)
    smoothing: float = setting(0.1, "Label smoothing.", ge=0, lt=1)

    def to_dict(self) -> dict:
        return asdict(self)


class Shifted(Dataset):
    """Random integer shift (zero-padded in normalised space at the background value)."""

    def __init__(self, ds: Dataset, shift: int):
        self.ds, self.shift = ds, int(shift)
        self.num_classes = getattr(ds, "num_classes", None)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        s = self.shift
        if s > 0:
            h, w = x.shape[-2:]
            bg = x.amin()
            xp = F.pad(x, (s, s, s, s), value=float(bg))
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            x = xp[:, dy : dy + h, dx : dx + w]
        return x, y


def check_data(data: str) -> None:
    """One-line error for a data argument that is neither built-in nor an existing folder."""
    if data in BUILTIN:
        return
    if not os.path.isdir(data):
        raise VitCompressError(
            f"data folder {data!r} does not exist; pass digits, mnist10k or an ImageFolder directory"
        )


def train_dataset(data: str, cfg: DataConfig, aug: AugConfig) -> Dataset:
    """The training split with augmentation."""
    check_data(data)
    if data in BUILTIN:
        ds = make_dataset(data, cfg, "train")
        return Shifted(ds, aug.shift) if aug.shift else ds
    sub = os.path.join(data, "train")
    path = sub if os.path.isdir(sub) else data
    transform = image_transform(
        cfg,
        True,
        auto_augment=aug.auto_augment,
        hflip=aug.hflip,
        color_jitter=aug.color_jitter or None,
        re_prob=aug.re_prob,
    )
    return image_folder(path, cfg, transform)


def val_dataset(data: str, cfg: DataConfig, split: str = "val") -> Dataset:
    """An evaluation split (no augmentation)."""
    check_data(data)
    return make_dataset(data, cfg, split, training=False)


def num_classes_of(ds: Dataset) -> int | None:
    n = getattr(ds, "num_classes", None)
    if n is None and hasattr(ds, "ds"):
        n = getattr(ds.ds, "num_classes", None)
    return n


class EpochSampler(Sampler):
    """Deterministic per-epoch permutation (seed + epoch), sharded over ``world`` ranks.

    With ``shuffle`` and ``pad`` it behaves like ``DistributedSampler``: every rank gets the same
    number of indices (the permutation is padded by wrapping). Without ``pad`` (evaluation) the
    shards are ``indices[rank::world]`` and may differ by one.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0, pad: bool = True):
        self.n, self.rank, self.world, self.shuffle, self.seed, self.pad = n, rank, world, shuffle, seed, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.pad and self.world > 1:
            total = math.ceil(self.n / self.world) * self.world
            idx = (idx * math.ceil(total / max(1, len(idx))))[:total]
        return idx[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        if self.pad and self.world > 1:
            return math.ceil(self.n / self.world)
        return len(range(self.rank, self.n, self.world))


def make_loader(
    ds: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over ``ds`` with an ``EpochSampler`` (call ``loader.sampler.set_epoch(e)``)."""
    if batch_size < 1:
        raise VitCompressError(f"batch_size must be at least 1, got {batch_size}", params=["batch_size"])
    sampler = EpochSampler(len(ds), rank, world, shuffle=train, seed=seed, pad=train)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=train and len(sampler) >= 2 * batch_size,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def make_mixup(aug: AugConfig, num_classes: int):
    """A ``timm.data.Mixup`` (which also applies label smoothing), or None when mixup/cutmix are off."""
    if not (aug.mixup > 0 or aug.cutmix > 0):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=aug.smoothing, num_classes=num_classes)
