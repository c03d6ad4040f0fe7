"""Training losses: label cross-entropy and knowledge distillation from a teacher.

``loss = ce * CE(student, labels)
       + kd * T^2 * KL(softmax(teacher / T) || softmax(student / T))      (kind 'soft')
       + hidden * mean_l relMSE(student block l, teacher block m(l))``

- **soft**: KL divergence on temperature-softened logits (the same gradient as soft
  cross-entropy, and exactly zero when student and teacher agree), scaled by T^2.
- **hard** (DeiT): a model with a distillation token is trained with its class head on the labels
  and its distillation head on the teacher's argmax: ``ce * CE(cls, y) + kd * CE(dist, argmax t)``.
- **hidden**: MSE between block outputs (the residual stream, all tokens), divided by the
  teacher's mean square so the weight does not depend on the activation scale. Block ``l`` of the
  student is compared with the teacher block that has the same ``source_index`` (the block of
  the unpruned model it was cut from), so removed blocks are skipped; when embedding channels
  were pruned only the channels both models kept (``plan.embed``) are compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_fields, setting
from .data import check_teacher
from .errors import VitCompressError
from .families import family_of, spec_from_model
from .logits import logits_of
from .meta import attached
from .tokens.apply import schedule_of

KINDS = ("auto", "soft", "hard", "none")


@dataclass
class DistillConfig:
    """Loss weights and temperature (defaults are the documented ``finetune`` defaults)."""

    kind: str = setting(
        "auto",
        "soft (KL on logits), hard (DeiT dist token), auto (hard if the model has a dist token) or none.",
        choices=KINDS,
    )
    ce: float = setting(1.0, "Weight of the label cross-entropy.", ge=0, le=1e6)
    kd: float = setting(1.0, "Weight of the logit distillation term.", ge=0, le=1e6)
    temperature: float = setting(2.0, "Softmax temperature of the logit distillation term.", gt=0, le=1e6)
    hidden: float = setting(
        0.0, "Weight of the hidden-state MSE (matched blocks, kept channels; 0 = off).", ge=0, le=1e6
    )

    def validate(self) -> None:
        """One-line ``VitCompressError`` for a weight or temperature that is not a finite number in
        its range, an unknown kind, or all three weights zero (nothing to train on)."""
        if self.kind not in KINDS:
            raise VitCompressError(f"unknown distillation kind {self.kind!r}; use one of {', '.join(KINDS)}")
        check_fields(self)
        used = (self.ce, self.hidden) if self.kind == "none" else (self.ce, self.kd, self.hidden)
        if not any(used):
            names = "ce and hidden" if self.kind == "none" else "ce, kd and hidden"
            raise VitCompressError(
                f"{names} are all 0, so the loss is 0 and nothing would train; give one of them a weight > 0",
                params=["ce", "kd", "hidden"],
            )

    def to_dict(self) -> dict:
        return asdict(self)


def has_dist_token(model: nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None and hasattr(model, "head_dist")


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean", log_target=True
    ) * (t * t)


def _embed_channels(model: nn.Module) -> list[int]:
    meta = attached(model)
    width = spec_from_model(model).embed_dim
    if meta is not None and meta.plan is not None and len(meta.plan.embed) == width:
        return list(meta.plan.embed)
    return list(range(width))


def _source_indices(model: nn.Module) -> list[int]:
    return [b.source_index for b in spec_from_model(model).blocks]


def layer_mapping(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
    """Pairs (student block, teacher block) that descend from the same source block."""
    t_of = {s: j for j, s in enumerate(_source_indices(teacher))}
    return [(i, t_of[s]) for i, s in enumerate(_source_indices(student)) if s in t_of]


def channel_mapping(student: nn.Module, teacher: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors (student channels, teacher channels) of the residual channels both kept."""
    se, te = _embed_channels(student), _embed_channels(teacher)
    t_pos = {c: j for j, c in enumerate(te)}
    pairs = [(i, t_pos[c]) for i, c in enumerate(se) if c in t_pos]
    if not pairs:
        raise VitCompressError(
            "student and teacher share no embedding channels; pass the teacher the student was pruned from"
        )
    s, t = zip(*pairs)
    return torch.tensor(s), torch.tensor(t)


class _Capture:
    """Forward hooks that keep the outputs of chosen blocks."""

    def __init__(self, model: nn.Module, indices: list[int]):
        self.out: dict[int, torch.Tensor] = {}
        parts = family_of(model).parts(model)
        self.handles = [model.get_submodule(parts[i].path).register_forward_hook(self._hook(i)) for i in indices]

    def _hook(self, i):
        def fn(_m, _inp, out):
            self.out[i] = out

        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class TrainLoss(nn.Module):
    """The training criterion: ``loss, logits = crit(model_output, images, targets)``.

    ``targets`` are class indices or (with mixup) soft targets. With a teacher the criterion runs
    the teacher (no grad) on the same images; hidden-state terms use forward hooks on both models'
    blocks, so it works unchanged when the student is wrapped in DistributedDataParallel.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        cfg: DistillConfig | None = None,
        smoothing: float = 0.0,
    ):
        super().__init__()
        self.cfg = cfg or DistillConfig(kd=0.0, hidden=0.0)
        self.cfg.validate()
        self.teacher = teacher
        self.smoothing = smoothing
        self.kind = "none"
        self.pairs: list[tuple[int, int]] = []
        self._s_cap = self._t_cap = None
        if teacher is not None:
            check_teacher(student, teacher, "student")
            kind = self.cfg.kind
            if kind == "auto":
                kind = "hard" if has_dist_token(student) else "soft"
            if kind == "hard" and not has_dist_token(student):
                raise VitCompressError(
                    "hard distillation needs a model with a distillation token (deit_*_distilled_*); use kind=soft",
                    params=["kind"],
                )
            self.kind = kind
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            if self.cfg.hidden > 0:
                if any(schedule_of(m) is not None for m in (student, teacher)):
                    raise VitCompressError(
                        "hidden-state distillation compares all tokens, and token reduction "
                        "changes their number; set hidden=0 for token-reduced models",
                        params=["hidden"],
                    )
                self.pairs = layer_mapping(student, teacher)
                if not self.pairs:
                    raise VitCompressError(
                        "no student block descends from a teacher block; set hidden=0 or pass the source teacher",
                        params=["hidden"],
                    )
                s_ch, t_ch = channel_mapping(student, teacher)
                self.register_buffer("s_ch", s_ch, persistent=False)
                self.register_buffer("t_ch", t_ch, persistent=False)
                self._s_cap = _Capture(student, [i for i, _ in self.pairs])
                self._t_cap = _Capture(teacher, [j for _, j in self.pairs])
        if self.kind == "hard":
            student.set_distilled_training(True)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 2:  # soft targets from mixup (smoothing already applied)
            return torch.sum(-target * F.log_softmax(logits, -1), -1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)

    def forward(self, output, images: torch.Tensor, target: torch.Tensor):
        cfg = self.cfg
        parts: dict[str, torch.Tensor] = {}
        if self.kind == "hard" and isinstance(output, (tuple, list)):
            cls_out, dist_out = output
            logits = (cls_out + dist_out) / 2
        else:
            cls_out = logits = output[0] if isinstance(output, (tuple, list)) else output
        if cfg.ce > 0 or self.teacher is None:
            parts["ce"] = (cfg.ce if self.teacher is not None else 1.0) * self._ce(cls_out.float(), target)
        if self.teacher is not None:
            with torch.no_grad():
                t = logits_of(self.teacher(images)).float()
            if self.kind == "soft" and cfg.kd > 0:
                parts["kd"] = cfg.kd * kd_kl(logits.float(), t, cfg.temperature)
            elif self.kind == "hard" and cfg.kd > 0:
                parts["kd"] = cfg.kd * F.cross_entropy(dist_out.float(), t.argmax(-1))
            if self.pairs:
                assert self._s_cap is not None and self._t_cap is not None  # set with the pairs
                terms = []
                for i, j in self.pairs:
                    s_h = self._s_cap.out.pop(i).float().index_select(-1, self.s_ch)
                    t_h = self._t_cap.out.pop(j).float().index_select(-1, self.t_ch)
                    terms.append(F.mse_loss(s_h, t_h) / t_h.pow(2).mean().clamp_min(1e-6))
                parts["hidden"] = cfg.hidden * torch.stack(terms).mean()
        loss = sum(parts.values())
        return loss, logits, {k: float(v.detach()) for k, v in parts.items()}

    def close(self) -> None:
        """Remove the hooks (the student keeps working as before)."""
        for c in (self._s_cap, self._t_cap):
            if c is not None:
                c.remove()
