"""The one training loop behind ``train``, ``finetune`` and the pipeline.

``fit(model, cfg, output, teacher=..., distill=..., callbacks=...)`` trains ``model`` on
``cfg.data`` and writes ``output`` as an artifact folder after every epoch (atomically: the
folder is swapped in one atomic exchange), holding the weights, ``vitcompress.json`` (with the training
record in ``extra["training"]``) and ``checkpoint.pt`` (model, optimizer, scheduler, grad scaler,
epoch, step, RNG states of every rank). A run killed mid-epoch loses at most that epoch;
``resume=True`` continues from the checkpoint and reproduces the uninterrupted run exactly for a
fixed seed (the data order is a function of seed and epoch, the RNG states are restored).

Distributed: under ``torchrun --nproc_per_node N`` the process group is initialised from the
environment (NCCL on GPU, gloo on CPU), the model is wrapped in DistributedDataParallel, the data
is sharded per rank, metrics are all-reduced and only rank 0 writes. AMP (bf16, or fp16 with a
grad scaler) is used on GPU. A non-finite loss stops the run with a one-line error and leaves the
last good checkpoint in place.

Callbacks (``Callback``) see every step's loss and every epoch's metrics, on every rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2, list_optimizers
from torch import nn
from torch.utils.data import DataLoader

from .artifact import META, WEIGHTS, check_output, check_weights, meta_of, save
from .callbacks.base import Callback, LoopState
from .config import check_fields, setting
from .data import DataConfig
from .datapipe import AugConfig, check_data, make_loader, make_mixup, num_classes_of, train_dataset, val_dataset
from .distill import DistillConfig, TrainLoss
from .distributed import barrier, check_device, dist_info, init_distributed, launch_rank
from .errors import VitCompressError
from .evaluate import check_classes, evaluate
from .io import atomic_dir, output_lock, recover_dir
from .models import unpickling_reason
from .progress import tqdm
from .spec import RecordError

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: ``checkpoint["format"]``: a file without it is not resumed from
CHECKPOINT_FORMAT = "vitcompress-checkpoint"
CHECKPOINT_VERSION = 1
AMP_MODES = ("auto", "bf16", "fp16", "off")
# options that may differ between the interrupted and the resumed run
_RESUME_FREE = ("workers", "progress", "device")


def _aug(name: str) -> Any:
    """A field with the default and help of ``AugConfig.<name>``."""
    f = AugConfig.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint and the artifact)."""

    data: str = setting("mnist10k", "digits, mnist10k or an ImageFolder directory (DIR/train, DIR/val).")
    epochs: int = setting(10, "Training epochs.", ge=1)
    batch_size: int = setting(64, "Global batch size (split over torchrun ranks).", ge=1)
    lr: float = setting(1e-3, "Peak learning rate (AdamW, warmup then cosine; at most 10).", gt=0, le=10)
    min_lr: float = setting(1e-5, "Learning rate at the end of the cosine decay (0 <= min_lr <= lr).", ge=0)
    weight_decay: float = setting(0.05, "AdamW weight decay (at most 10: beyond, the weights diverge).", ge=0, le=10)
    warmup_epochs: float = setting(1.0, "Epochs of linear warmup (fractions allowed).", ge=0)
    optimizer: str = setting("adamw", "timm optimizer name (timm.optim.create_optimizer_v2).")
    clip_grad: float | None = setting(1.0, "Gradient norm clip (0 = off).", ge=0)
    seed: int = setting(
        0, "Random seed: data order, augmentation, dropout (and a new model's initial weights).", ge=0, lt=2**32
    )
    amp: str = setting("auto", "auto, bf16, fp16 or off (GPU only; CPU runs fp32).", choices=AMP_MODES)
    workers: int = setting(0, "Data loader processes.", ge=0, le=256)
    device: str | None = setting(None, "cpu, cuda, cuda:1 (default: the local GPU if any).")
    progress: bool = setting(True, "Progress bars and per-epoch lines (logging, rank 0).")
    eval_every: int = setting(1, "Evaluate every N epochs and after the last (0 = never).", ge=0)
    # augmentation: defaults and help are datapipe.AugConfig's
    shift: int = _aug("shift")
    auto_augment: str | None = _aug("auto_augment")
    hflip: float = _aug("hflip")
    color_jitter: float = _aug("color_jitter")
    re_prob: float = _aug("re_prob")
    mixup: float = _aug("mixup")
    cutmix: float = _aug("cutmix")
    smoothing: float = _aug("smoothing")
    max_steps_per_epoch: int | None = setting(None, "Truncate every epoch (quick runs).", ge=1)

    def __post_init__(self) -> None:
        if self.clip_grad == 0:
            self.clip_grad = None  # 0 switches clipping off

    def validate(self) -> None:
        """One-line ``VitCompressError`` for any value out of range: every number finite and within
        its field's range (``setting``), ``min_lr <= lr``, a known optimizer and device, an existing
        data set, an even batch for mixup/cutmix."""
        check_fields(self)
        if self.min_lr > self.lr:
            raise VitCompressError(
                f"min_lr {self.min_lr} is above lr {self.lr}; the cosine decay ends at min_lr <= lr",
                params=["min_lr", "lr"],
            )
        if self.optimizer not in create_optimizer_names():
            raise VitCompressError(
                f"unknown optimizer {self.optimizer!r}; use a timm optimizer name such as adamw or sgd",
                params=["optimizer"],
            )
        check_device(self.device)
        check_data(self.data)
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise VitCompressError(
                f"mixup/cutmix need an even batch_size, got {self.batch_size}", params=["batch_size"]
            )

    def aug(self) -> AugConfig:
        return AugConfig(**{f.name: getattr(self, f.name) for f in fields(AugConfig)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def create_optimizer_names() -> set[str]:
    """The optimizer names ``timm.optim.create_optimizer_v2`` accepts."""
    return set(list_optimizers())


# ------------------------------------------------------------------------------------ devices
def _pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_info()[2])
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on this device (None: full precision)."""
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            return None  # AMP is a GPU feature here; CPU runs in fp32
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ------------------------------------------------------------------------------------ RNG states
def _rng_state() -> dict:
    """This process's random states as tensors and plain values (what ``torch.load(weights_only=True)``
    reads back: no pickled NumPy objects)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    s = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ------------------------------------------------------------------------------------ scheduling
def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warmup then cosine decay to ``min_lr``, per optimizer step (as a factor of lr)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


# ------------------------------------------------------------------------------------ checkpoints
def prepare_output(output: str | os.PathLike, *, resume: bool, force: bool) -> dict | None:
    """Check the output folder before any work; return the checkpoint to resume from (or None)."""
    out = check_output(output, force=force, exists_ok=resume, resumable=True)
    if resume:
        recover_dir(out)  # a run killed while swapping its output folder left it moved aside
        ck = out / CHECKPOINT
        if ck.is_file():
            return read_checkpoint(ck)
        if out.exists():
            raise VitCompressError(
                f"{str(out)!r} has no {CHECKPOINT} to resume from; drop resume=True and pass force=True to start again",
                params=["resume", "force"],
            )
        return None  # killed before the first epoch finished: start from scratch
    if out.exists() and not force:
        raise VitCompressError(
            f"output {str(out)!r} already exists; pass resume=True to continue it, "
            "force=True to overwrite it, or choose another path",
            params=["resume", "force"],
        )
    return None


_CHECKPOINT_FIELDS = {
    "config": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "epoch": int,
    "step": int,
    "history": list,
    "rng": list,
    "callbacks": list,
}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint, loaded without unpickling code: ``torch.load(weights_only=True)``
    reads tensors and plain containers only, and a file that pickles anything else (a function, a
    class, a NumPy object) is refused in one line, nothing of it run. A file that is not a
    vitcompress checkpoint (no format marker, missing or mistyped fields) is refused too."""
    fix = "drop resume=True and pass force=True to start again"
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it then refuses
            warnings.simplefilter("ignore", UserWarning)
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VitCompressError(
            f"checkpoint {str(path)!r} was not loaded ({unpickling_reason(e, path)}); {fix}", params=["resume", "force"]
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise VitCompressError(
            f"{str(path)!r} is not a vitcompress training checkpoint (no format marker: written by another tool "
            f"or an older vitcompress); {fix}",
            params=["resume", "force"],
        )
    version = ck.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise VitCompressError(
            f"checkpoint {str(path)!r} has format version {version!r}, not one this vitcompress reads "
            f"({CHECKPOINT_VERSION}); upgrade vitcompress or {fix}",
            params=["resume", "force"],
        )
    for key, kind in _CHECKPOINT_FIELDS.items():
        value = ck.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise VitCompressError(
                f"checkpoint {str(path)!r} is corrupt ({key} is {type(value).__name__}, not {kind.__name__}); {fix}",
                params=["resume", "force"],
            )
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ck["model"].items()):
        raise VitCompressError(
            f"checkpoint {str(path)!r} is corrupt (model is not a state dict of tensors); {fix}",
            params=["resume", "force"],
        )
    return ck


def check_resume_model(ckpt: dict, model: nn.Module, path: str | os.PathLike) -> None:
    """One-line error unless the checkpoint's weights fit ``model`` exactly (same tensors, shapes and
    dtypes, all finite): a checkpoint of another architecture is refused before any work."""
    try:
        check_weights(ckpt["model"], model.state_dict())
    except RecordError as e:
        raise VitCompressError(
            f"checkpoint {str(path)!r} does not fit this model ({e}); resume with the model and options it was "
            "written with, or drop resume=True and pass force=True to start again",
            params=["resume", "force"],
        ) from None


def _write(output: Path, model: nn.Module, ckpt: dict, record: dict, force: bool) -> None:
    """Atomically replace ``output`` with artifact + checkpoint + training record."""
    meta = meta_of(model)
    meta.extra = {**meta.extra, "training": record}
    with atomic_dir(output, force=True) as tmp:
        save(model, tmp / "artifact", meta=meta)
        for name in (WEIGHTS, META):
            os.replace(tmp / "artifact" / name, tmp / name)
        shutil.rmtree(tmp / "artifact", ignore_errors=True)
        torch.save(ckpt, tmp / CHECKPOINT)
        (tmp / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")


def _unwrap(model: nn.Module) -> nn.Module:
    return (
        model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
    )


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    diff = [k for k in now if k not in _RESUME_FREE and k in saved and saved[k] != now[k]]
    if diff:
        k = diff[0]
        raise VitCompressError(
            f"the checkpoint was trained with {k}={saved[k]!r}, not {now[k]!r}; "
            "pass the same options to resume=True or start a new run",
            params=["resume"],
        )


# ---------------------------------------------------------------------------------------- loop
@dataclass
class FitResult:
    model: nn.Module
    history: list
    val: dict | None
    output: Path | None


@dataclass
class _Run:
    """What one training run works with, built once by ``_setup`` (``net`` is ``model`` or its DDP wrapper)."""

    cfg: TrainConfig
    model: nn.Module
    net: nn.Module
    teacher: nn.Module | None
    device: torch.device
    dtype: torch.dtype | None
    rank: int
    world: int
    train_loader: DataLoader
    val_loader: DataLoader | None
    steps: int  # optimizer steps per epoch
    mixup: Any
    crit: TrainLoss
    optimizer: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    output: str | os.PathLike | None = None,
    *,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
    force: bool = False,
    record: dict | None = None,
) -> FitResult:
    """Train ``model`` (in place) with the configured data, optimizer and schedule.

    ``teacher``/``distill`` (a ``DistillConfig``) turn on distillation; ``output`` receives the
    artifact + checkpoint after every epoch (rank 0 only); ``resume`` continues from
    ``output/checkpoint.pt``. ``record`` is merged into the training record stored in the artifact.
    Returns the trained (unwrapped) model, the per-epoch history and the last validation metrics.
    """
    cfg.validate()
    if getattr(model, "vitcompress_meta", None) is None:
        model.vitcompress_meta = meta_of(model)  # fails early for models it cannot record
    with contextlib.ExitStack() as stack:
        if output is not None and launch_rank() == 0:  # the writer holds the output for the whole run
            stack.enter_context(output_lock(check_output(output, force=force, exists_ok=resume, resumable=True)))
        ckpt = prepare_output(output, resume=resume, force=force) if output is not None else None
        if ckpt is not None and output is not None:
            _check_resume_config(ckpt["config"], cfg)
            check_resume_model(ckpt, model, Path(output, CHECKPOINT))
        return _fit(model, cfg, output, ckpt, teacher, distill, callbacks, record)


def _fit(
    model: nn.Module,
    cfg: TrainConfig,
    output: str | os.PathLike | None,
    ckpt: dict | None,
    teacher: nn.Module | None,
    distill: DistillConfig | None,
    callbacks: Sequence[Callback],
    record: dict | None,
) -> FitResult:
    created_group = init_distributed()
    try:
        run = _setup(model, cfg, teacher, distill)
        state = _restore(run, ckpt) if ckpt is not None else LoopState()
        if run.world > 1:
            run.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[run.device.index] if run.device.type == "cuda" else None
            )
        if ckpt is not None:
            for cb, cb_state in zip(callbacks, ckpt.get("callbacks") or []):
                if cb_state is not None:
                    try:
                        cb.load_state_dict(cb_state)
                    except (KeyError, TypeError, ValueError, AttributeError) as e:
                        raise VitCompressError(
                            f"the checkpoint's {type(cb).__name__} state does not fit ({type(e).__name__}); "
                            "resume with the options it was written with, or drop resume=True and pass force=True",
                            params=["resume", "force"],
                        ) from None
        for cb in callbacks:
            cb.on_train_begin(state)
        out = Path(output) if output is not None else None
        base_record = {
            "config": cfg.to_dict(),
            "world_size": run.world,
            "distill": distill.to_dict() if distill is not None else None,
            **(record or {}),
        }
        val = state.history[-1].get("val") if state.history else None
        for epoch in range(state.epoch, cfg.epochs):
            metrics = _train_epoch(run, state, epoch, callbacks)
            last = epoch + 1 == cfg.epochs
            if run.val_loader is not None and cfg.eval_every > 0 and (last or (epoch + 1) % cfg.eval_every == 0):
                val = evaluate(model, run.val_loader, teacher=teacher, amp_dtype=run.dtype).to_dict()
                metrics["val"] = val
            state.epoch, state.history = epoch + 1, [*state.history, metrics]
            rngs = _gather_rng_states(run)  # every rank takes part
            if out is not None and run.rank == 0:
                rec = {**base_record, "epochs_done": state.epoch, "history": state.history, "val": metrics.get("val")}
                _write(out, model, _checkpoint(run, state, callbacks, rngs), rec, force=True)
            barrier()
            if run.rank == 0 and cfg.progress:
                _log_epoch(cfg, metrics, callbacks)
            for cb in callbacks:
                cb.on_epoch_end(epoch + 1, metrics)
        for cb in callbacks:
            cb.on_train_end(state.history[-1] if state.history else {})
        _finish(run)
        return FitResult(model, state.history, val, out)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _setup(model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None, distill: DistillConfig | None) -> _Run:
    """Data, loaders, device, loss, optimizer, schedule and grad scaler of a run (seeds this rank's streams)."""
    rank, world, _ = dist_info()
    device = _pick_device(cfg)
    dtype = amp_dtype(cfg.amp, device)
    dcfg = DataConfig.from_model(model)
    train_ds = train_dataset(cfg.data, dcfg, cfg.aug())
    val_ds = val_dataset(cfg.data, dcfg, "val")
    if len(train_ds) == 0:
        raise VitCompressError(
            f"data {cfg.data!r} has no training images; point data at a folder with images", params=["data"]
        )
    check_classes(model, num_classes_of(train_ds))
    seed_everything(cfg.seed + rank)  # per-rank augmentation and dropout streams
    per_rank = max(1, cfg.batch_size // world)
    train_loader = make_loader(
        train_ds,
        per_rank,
        train=True,
        seed=cfg.seed,
        rank=rank,
        world=world,
        workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    val_loader = (
        make_loader(val_ds, per_rank * 2, train=False, rank=rank, world=world, workers=cfg.workers)
        if len(val_ds)
        else None
    )
    steps = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    mixup = make_mixup(cfg.aug(), model.num_classes)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    crit = TrainLoss(model, teacher, distill, smoothing=0.0 if mixup else cfg.smoothing)
    optimizer = create_optimizer_v2(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return _Run(
        cfg=cfg,
        model=model,
        net=model,
        teacher=teacher,
        device=device,
        dtype=dtype,
        rank=rank,
        world=world,
        train_loader=train_loader,
        val_loader=val_loader,
        steps=steps,
        mixup=mixup,
        crit=crit,
        optimizer=optimizer,
        sched=sched,
        scaler=scaler,
    )


def _restore(run: _Run, ckpt: dict) -> LoopState:
    """Load the model, optimizer, schedule, grad scaler and this rank's RNG states from a checkpoint."""
    rngs = ckpt["rng"]
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.sched.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        if len(rngs) == run.world:
            _set_rng_state(rngs[run.rank])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else ""
        raise VitCompressError(
            f"the checkpoint does not fit this run ({type(e).__name__}: {reason}); resume with the options it was "
            "written with, or drop resume=True and pass force=True to start again",
            params=["resume", "force"],
        ) from None
    if len(rngs) != run.world and run.rank == 0:
        logger.warning(
            "note: checkpoint was written by %d processes, this run has %d; random streams restart "
            "(the data order is unchanged)",
            len(rngs),
            run.world,
        )
    return LoopState(ckpt["epoch"], ckpt["step"], list(ckpt["history"]))


def _train_epoch(run: _Run, state: LoopState, epoch: int, callbacks: Sequence[Callback]) -> dict:
    """One epoch of optimizer steps; returns its train metrics (summed over ranks)."""
    cfg = run.cfg
    run.net.train()
    if run.teacher is not None:
        run.teacher.eval()
    run.train_loader.sampler.set_epoch(epoch)
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)  # loss*n, correct, n
    t0 = time.perf_counter()
    bar = tqdm(
        total=run.steps,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (cfg.progress and run.rank == 0),
        leave=False,
        dynamic_ncols=True,
    )
    for i, (x, y) in enumerate(run.train_loader):
        if i >= run.steps:
            break
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        loss_v, logits = _train_step(run, x, y)
        if not math.isfinite(loss_v):
            good = f"epoch {state.epoch}" if state.epoch else "none yet"
            raise VitCompressError(
                f"loss became {loss_v} at epoch {epoch + 1} step {i + 1}; stopped (last good checkpoint: "
                f"{good}); lower lr, raise warmup_epochs or use amp=bf16 or amp=off",
                params=["lr", "warmup_epochs", "amp"],
            )
        state.step += 1
        with torch.no_grad():
            sums[0] += loss_v * len(y)
            sums[1] += (logits.argmax(-1) == y).sum()
            sums[2] += len(y)
        for cb in callbacks:
            cb.on_step(loss_v, state.step)
        if bar.disable is False:
            el = time.perf_counter() - t0
            bar.set_postfix(
                loss=f"{sums[0].item() / sums[2].item():.4f}",
                acc=f"{sums[1].item() / sums[2].item():.3f}",
                img_s=f"{sums[2].item() * run.world / max(el, 1e-9):.0f}",
                **{k: v for cb in callbacks for k, v in cb.status().items()},
            )
            bar.update(1)
    bar.close()
    if run.world > 1:
        torch.distributed.all_reduce(sums)
    seconds = time.perf_counter() - t0
    n = max(1.0, float(sums[2]))
    return {
        "epoch": epoch + 1,
        "train_loss": float(sums[0]) / n,
        "train_acc": float(sums[1]) / n,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "images_per_s": float(sums[2]) / max(seconds, 1e-9),
    }


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Forward, loss, backward and one optimizer step; returns the loss (mean over ranks) and the logits.

    A non-finite loss is returned before any update, so the weights stay those of the last good step.
    """
    target = y
    if run.mixup is not None:
        x, target = run.mixup(x, y)
    with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype is not None):
        loss, logits, _parts = run.crit(run.net(x), x, target)
    loss_t = loss.detach().float().reshape(1)
    if run.world > 1:
        torch.distributed.all_reduce(loss_t)
        loss_t /= run.world
    loss_v = float(loss_t)
    if not math.isfinite(loss_v):
        return loss_v, logits
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.sched.step()
    return loss_v, logits


def _gather_rng_states(run: _Run) -> list:
    """The RNG states of every rank, in rank order (a collective call under torchrun)."""
    if run.world == 1:
        return [_rng_state()]
    rngs: list = [None] * run.world
    torch.distributed.all_gather_object(rngs, _rng_state())
    return rngs


def _checkpoint(run: _Run, state: LoopState, callbacks: Sequence[Callback], rngs: list) -> dict:
    """Everything a resumed run needs."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": run.cfg.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.sched.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "rng": rngs,
        "callbacks": [cb.state_dict() for cb in callbacks],
    }


def _log_epoch(cfg: TrainConfig, metrics: dict, callbacks: Sequence[Callback] = ()) -> None:
    """The epoch's line: loss, accuracies, speed, and what the callbacks show (GAS: its current rate)."""
    v = metrics.get("val")
    logger.info(
        f"epoch {metrics['epoch']}/{cfg.epochs}  loss {metrics['train_loss']:.4f}  "
        f"train acc {metrics['train_acc']:.2%}"
        + (f"  val top-1 {v['top1']:.2%}" if v else "")
        + f"  {metrics['images_per_s']:.0f} img/s"
        + "".join(f"  {k} {val}" for cb in callbacks for k, val in cb.status().items())
    )


def _finish(run: _Run) -> None:
    """Remove the loss's hooks, leave distilled-training mode and put the model in eval mode."""
    run.crit.close()
    if run.crit.kind == "hard":
        run.model.set_distilled_training(False)
    run.model.eval()
