"""Image data: the built-in real datasets (``digits``, ``mnist10k``) and ImageFolder directories.

Built-in splits are fixed: the first 80% of each class (in file order) is ``train``, the rest
``val``. Images are resized to the model's input size (bilinear), replicated to its input
channels and normalised with its mean/std, so the same data serves any ViT.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import VitCompressError
from ..families import Family, family_of

BUILTIN = ("digits", "mnist10k")
SPLITS = ("train", "val", "all")
TRAIN_FRACTION = 0.8


@dataclass
class DataConfig:
    """Input geometry and normalisation a model expects."""

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_model(cls, model: nn.Module, family: Family | None = None) -> DataConfig:
        """The geometry ``model``'s family reads off it (``family``: already known, else asked) and
        the normalisation of its ``pretrained_cfg``."""
        c, h, w = (family or family_of(model)).input_size(model)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        if len(mean) != c:
            mean, std = (float(np.mean(mean)),) * c, (float(np.mean(std)),) * c
        return cls((h, w), c, mean, std)


def check_teacher(model: nn.Module, teacher: nn.Module, role: str = "model") -> None:
    """One-line error unless ``teacher`` sees the same images as ``model`` (input channels and size)
    and predicts the same classes: both get the same batches (``role`` names ``model`` in messages)."""
    mine, theirs = DataConfig.from_model(model), DataConfig.from_model(teacher)
    if (mine.in_chans, mine.img_size) != (theirs.in_chans, theirs.img_size):
        raise VitCompressError(
            f"the teacher takes {theirs.in_chans}x{theirs.img_size[0]}x{theirs.img_size[1]} images, the {role} "
            f"{mine.in_chans}x{mine.img_size[0]}x{mine.img_size[1]}; pass a teacher of the same input size and channels"
        )
    if getattr(teacher, "num_classes", None) != getattr(model, "num_classes", None):
        raise VitCompressError(
            f"teacher has {teacher.num_classes} classes but the {role} has {model.num_classes}; "
            "pass a teacher trained on the same classes"
        )


@lru_cache(maxsize=4)
def load_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, H, W] in [0, 1] and int64 labels of a built-in dataset."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)
    if name == "mnist10k":
        with resources.as_file(resources.files("vitcompress") / "data" / "mnist10k.npz") as p:
            z = np.load(p)
            return (z["images"].astype(np.float32) / 255.0), z["labels"].astype(np.int64)
    raise VitCompressError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN)} or an ImageFolder directory")


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Fixed split: per class, the first 80% (in file order) is 'train', the rest 'val'."""
    if split not in SPLITS:
        raise VitCompressError(f"unknown split {split!r}; use train, val or all")
    if split == "all":
        return np.arange(len(labels))
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        cut = int(round(TRAIN_FRACTION * len(idx)))
        out.append(idx[:cut] if split == "train" else idx[cut:])
    return np.sort(np.concatenate(out))


class ArrayImageDataset(Dataset):
    """Grayscale images held in memory, resized/normalised on access."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: DataConfig):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(labels)
        self.cfg = cfg
        self.num_classes = int(labels.max()) + 1
        self._mean = torch.tensor(cfg.mean).view(-1, 1, 1)
        self._std = torch.tensor(cfg.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i][None, None]
        if tuple(x.shape[-2:]) != tuple(self.cfg.img_size):
            x = F.interpolate(x, size=self.cfg.img_size, mode="bilinear", align_corners=False)
        x = x[0].expand(self.cfg.in_chans, -1, -1)
        return (x - self._mean) / self._std, self.labels[i]


class ImageLoader:
    """Reads one image of an ImageFolder as the model's channels (grayscale for 1, RGB for 3); an
    image that cannot be read is a one-line error naming the file (not a traceback in the middle of
    an epoch)."""

    def __init__(self, in_chans: int):
        if in_chans not in (1, 3):
            raise VitCompressError(
                f"ImageFolder data is read as grayscale (1 channel) or RGB (3 channels), but the model takes "
                f"{in_chans} channels; use a model with in_chans=1 or 3",
                params=["in_chans"],
            )
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, path: str):
        from PIL import Image

        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO or a device would wait forever
                raise VitCompressError(f"image {path!r} is not a regular file; remove it from the data folder")
            with open(path, "rb") as f:
                return Image.open(f).convert(self.mode)
        except VitCompressError:
            raise
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise VitCompressError(
                f"image {path!r} cannot be read ({type(e).__name__}); remove or replace it"
            ) from None


def image_transform(cfg: DataConfig, training: bool, **options):
    """timm's transform for an ImageFolder in the model's geometry (``options``: augmentation); a
    one-line error for options timm refuses (an unknown ``auto_augment`` string, for one)."""
    from timm.data import create_transform

    try:
        return create_transform(
            input_size=(cfg.in_chans, *cfg.img_size), is_training=training, mean=cfg.mean, std=cfg.std, **options
        )
    except Exception as e:
        raise VitCompressError(
            f"cannot build the image transform ({type(e).__name__}: {str(e)[:100]}); check the augmentation "
            "options (auto_augment, e.g. rand-m9-mstd0.5)",
            params=["auto_augment"],
        ) from None


def image_folder(path: str, cfg: DataConfig, transform) -> Dataset:
    """An ImageFolder at ``path`` read in the model's channels (``ImageLoader``)."""
    from torchvision.datasets import ImageFolder

    loader = ImageLoader(cfg.in_chans)
    try:
        ds = ImageFolder(path, transform=transform, loader=loader)
    except (FileNotFoundError, RuntimeError) as e:
        raise VitCompressError(
            f"data folder {path!r} has no images in class sub-folders ({str(e)[:100]}); "
            "use an ImageFolder layout: DIR/<class>/<image>"
        ) from None
    ds.num_classes = len(ds.classes)
    return ds


def _image_folder(root: str, cfg: DataConfig, split: str, training: bool) -> Dataset:
    sub = os.path.join(root, split)
    path = sub if split in ("train", "val") and os.path.isdir(sub) else root
    return image_folder(path, cfg, image_transform(cfg, training))


def make_dataset(data: str, cfg: DataConfig, split: str = "train", training: bool = False) -> Dataset:
    """A dataset by name (``digits``, ``mnist10k``) or ImageFolder path, in the model's geometry."""
    if data in BUILTIN:
        images, labels = load_builtin(data)
        idx = split_indices(labels, split)
        return ArrayImageDataset(images[idx], labels[idx], cfg)
    if os.path.isdir(data):
        return _image_folder(data, cfg, split, training)
    raise VitCompressError(f"data {data!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor a folder")


def calibration_loader(
    data: str,
    model: nn.Module,
    n_images: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    family: Family | None = None,
) -> DataLoader:
    """``n_images`` training images drawn with a fixed seed, for scoring (``family``: the model's,
    when already known)."""
    if n_images < 1:
        raise VitCompressError(f"calib_images must be at least 1, got {n_images}", params=["calib_images"])
    ds = make_dataset(data, DataConfig.from_model(model, family), "train")
    if len(ds) == 0:
        raise VitCompressError(f"data {data!r} is empty; point it at a folder with images")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(n_images, len(ds))].tolist()
    sub = Subset(ds, idx)
    sub.num_classes = getattr(ds, "num_classes", None)
    return DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=0)
