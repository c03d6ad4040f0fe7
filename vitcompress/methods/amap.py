"""AMAP: a similarity-weighted, learnable channel indicator with even removal across heads.

Reading of the paper (see ``docs/methods.md``):

- **Similarity weight** of a channel = 1 - its mean |cosine similarity| to the other channels of
  its set over calibration activations, the activations centred per channel (so the similarity is
  the correlation and a constant offset, e.g. a bias, does not make channels look alike); the sets
  are the q/k dims of one head (q and k activations
  together), the v dims of one head, the MLP neurons of one block (after the activation) and, for
  ``heads``, the heads of one block (their outputs). Weights are normalised to mean 1 per set kind
  and block.
- **Indicator.** Each channel has a learnable indicator ``a`` (initialised to 1); its effective
  score is ``e = a * weight``. For linear attention (a family whose ``attention_difference``
  measures it, e.g. FLatten) the q/k indicators start from the attention difference instead: per
  block, how much each head's attention output changes on the calibration images when the channel
  is removed, divided by the block's mean change (so they average 1, as the default) and capped
  at 2. In every block the number of q/k (and v) dims kept per head is the
  mean over heads of the count with ``e > threshold``, and *every* head keeps its top dims by ``e``
  - the same number in each head, so heads never mismatch. Heads and MLP neurons are kept where
  ``e > threshold`` (at least one). The forward pass uses this binary mask; gradients reach ``a``
  straight through ``sigmoid((e - threshold) / temperature)``.
- **Resource penalty** ``resource * (cost(mask) / target - 1)^2`` with ``cost`` the MACs (or
  params) of the soft mask, exact and affine in the kept counts per block, and ``target`` the
  budget's MACs (params).
- **Reweight.** A learnable scale per surviving channel: on q rows (q/k dims), v rows (v dims and
  heads) and ``fc2`` input columns (MLP neurons); folded into those weights at slicing time.
- **Final plan.** The core's budget selection over ``max(e, 0) + mask`` (kept channels rank above
  removed ones), so the result meets the budget and the alignment rules like every other method;
  when the trained mask is on budget and aligned the selection reproduces it.

Masks act on q rows (zeroing q dim d of a head removes the q.k term of that dim, exactly what
removing the dim does), on v rows (a zero head outputs zero) and on ``fc1`` outputs (GELU(0) = 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..budget import Budget, select
from ..data import calibration_loader
from ..families import Family, family_of
from .activations import block_inputs, redundancy_weight
from .base import MethodOptions, MethodOutput, check_positive
from .optim import frozen_except, optimise
from .scaling import attach, fold

KIND_SUPPORT = ("heads", "qk", "v", "mlp")


@dataclass
class AMAPOptions(MethodOptions):
    """Hyperparameters of AMAP's indicator training."""

    steps: int = 100  # optimisation steps on calibration batches
    lr: float = 5e-2  # Adam learning rate of the indicators
    reweight_lr: float = 1e-2  # Adam learning rate of the reweight scales
    resource: float = 5.0  # weight of the resource penalty
    threshold: float = 0.5  # a channel is kept where its effective score exceeds this
    temperature: float = 0.1  # of the straight-through sigmoid
    train_weights: bool = False  # also train the model's weights
    weight_lr: float = 1e-4

    def validate(self) -> None:
        check_positive(self, "steps", "resource", allow_zero=True)
        check_positive(self, "lr", "reweight_lr", "temperature", "weight_lr")


# --------------------------------------------------------------------------------- similarity
def similarity_weights(
    model: nn.Module, loader, kinds, family: Family | None = None
) -> dict[tuple[str, int], torch.Tensor]:
    """``{(kind, block): weight}`` with weight of the group's shape (see the module docstring)."""
    return calibration_statistics(model, loader, kinds, family)[0]


def calibration_statistics(model: nn.Module, loader, kinds, family: Family | None = None) -> tuple[dict, dict]:
    """One pass over the calibration images: the similarity weights (``similarity_weights``) and
    the indicators' initial values where the family measures an attention difference
    (``{("qk", block): [H, qk]}``; empty for softmax attention). ``family``: the model's, when the
    caller already knows it (else asked with ``family_of``)."""
    kinds = set(kinds)
    fam = family or family_of(model)
    parts = fam.parts(model)
    attns = [model.get_submodule(p.attn) for p in parts]
    fc1s = [(model.get_submodule(p.fc1), model.get_submodule(p.act)) for p in parts]
    stats: dict[tuple[str, int], list] = {}
    change: dict[int, torch.Tensor] = {}

    def acc(key, a):
        """a: [..., samples, C]; accumulate the Gram matrix, the sum and the count."""
        g, s, n = a.transpose(-1, -2) @ a, a.sum(-2), a.shape[-2]
        if key in stats:
            st = stats[key]
            st[0] += g
            st[1] += s
            st[2] += n
        else:
            stats[key] = [g, s, n]

    with torch.no_grad():
        for attn_in, mlp_in in block_inputs(model, loader, fam):
            for l, attn in enumerate(attns):
                x = attn_in[l]
                if kinds & {"qk", "v"}:
                    q, k, v = fam.qkv_heads(attn, x)  # [B, H, N, d]
                    if "qk" in kinds:
                        acc(("qk", l), torch.cat([q, k], 2).transpose(0, 1).flatten(1, 2).to(torch.float64))
                        diff = fam.attention_difference(attn, x)
                        if diff is not None:
                            diff = diff.to(torch.float64).cpu()
                            change[l] = change[l] + diff if l in change else diff
                    if "v" in kinds:
                        acc(("v", l), v.transpose(0, 1).flatten(1, 2).to(torch.float64))
                if "heads" in kinds:
                    acc(("heads", l), fam.head_outputs(attn, x).flatten(1).T.to(torch.float64))
                if "mlp" in kinds:
                    fc1, act = fc1s[l]
                    acc(("mlp", l), act(fc1(mlp_in[l])).flatten(0, 1).to(torch.float32))
    out = {}
    for key, (g, s, n) in stats.items():
        g, s = g.to(torch.float64).cpu(), s.to(torch.float64).cpu()
        cov = g - s[..., :, None] * s[..., None, :] / n  # centred: correlation
        w = redundancy_weight(cov)
        m = float(w.mean())
        out[key] = (w / m if m > 1e-12 else torch.ones_like(w)).to(torch.float32)
    init = {}
    for l, c in change.items():
        m = float(c.mean())
        init[("qk", l)] = (
            (c / m).clamp(max=2.0).to(torch.float32) if m > 1e-12 else torch.ones_like(c, dtype=torch.float32)
        )
    return out, init


# ---------------------------------------------------------------------------------- indicator
def _equal_topk(e: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary [H, d] mask keeping the same number of top-``e`` dims in every head."""
    k = int(torch.clamp(torch.round((e > threshold).sum(1).float().mean()), 1, e.shape[1]))
    idx = torch.topk(e, k, dim=1).indices
    return torch.zeros_like(e).scatter_(1, idx, 1.0)


def _above(e: torch.Tensor, threshold: float) -> torch.Tensor:
    hard = (e > threshold).to(e.dtype)
    if hard.sum() == 0:
        hard[e.argmax()] = 1.0
    return hard


class Indicator(nn.Module):
    """AMAP's learnable indicators, similarity weights, masks and reweight scales for one model
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""

    def __init__(
        self,
        model: nn.Module,
        kinds,
        weights: dict,
        threshold: float,
        temperature: float,
        init: dict | None = None,
        family: Family | None = None,
    ):
        super().__init__()
        init = init or {}
        self.kinds = tuple(k for k in ("heads", "qk", "v", "mlp") if k in kinds)
        self.threshold, self.temperature = threshold, temperature
        self.apply_masks = True
        self.ind = nn.ParameterDict()
        self.rew = nn.ParameterDict()
        self.dims = []
        dev = next(model.parameters()).device
        fam = family or family_of(model)
        self.parts = fam.parts(model)
        for l, b in enumerate(fam.spec(model).blocks):
            h, qk, v, m = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
            self.dims.append((h, qk, v, m))
            shapes = {"heads": (h,), "qk": (h, qk), "v": (h, v), "mlp": (m,)}
            for kind in self.kinds:
                start = init.get((kind, l))
                start = torch.ones(shapes[kind]) if start is None else start.reshape(shapes[kind])
                self.ind[f"{kind}_{l}"] = nn.Parameter(start.to(device=dev, dtype=torch.float32).clone())
                self.register_buffer(f"w_{kind}_{l}", weights[(kind, l)].to(dev).reshape(shapes[kind]))
            if "qk" in self.kinds:
                self.rew[f"q_{l}"] = nn.Parameter(torch.ones(h, qk, device=dev))
            if "v" in self.kinds or "heads" in self.kinds:
                self.rew[f"v_{l}"] = nn.Parameter(torch.ones(h, v, device=dev))
            if "mlp" in self.kinds:
                self.rew[f"mlp_{l}"] = nn.Parameter(torch.ones(m, device=dev))

    def score(self, kind: str, l: int) -> torch.Tensor:
        """Effective score e = indicator x similarity weight."""
        return self.ind[f"{kind}_{l}"] * getattr(self, f"w_{kind}_{l}")

    def hard(self, kind: str, l: int) -> torch.Tensor:
        e = self.score(kind, l).detach()
        return _equal_topk(e, self.threshold) if kind in ("qk", "v") else _above(e, self.threshold)

    def soft(self, kind: str, l: int) -> torch.Tensor:
        return torch.sigmoid((self.score(kind, l) - self.threshold) / self.temperature)

    def mask(self, kind: str, l: int) -> torch.Tensor:
        """Binary in the forward pass, straight-through gradient to the indicator."""
        s = self.soft(kind, l)
        return self.hard(kind, l) + (s - s.detach())  # exactly the binary mask in the forward pass

    def hard_masks(self) -> dict[str, torch.Tensor]:
        return {f"{k}_{l}": self.hard(k, l) for l in range(len(self.dims)) for k in self.kinds}

    # gates used by the wrapped modules
    def qkv_gate(self, l: int) -> torch.Tensor:
        h, qk, v, _ = self.dims[l]
        ref = next(iter(self.ind.values()))
        one = torch.ones((), device=ref.device)
        head = self.mask("heads", l)[:, None] if "heads" in self.kinds and self.apply_masks else one
        q = self.rew[f"q_{l}"] if "qk" in self.kinds else torch.ones(h, qk, device=ref.device)
        if "qk" in self.kinds and self.apply_masks:
            q = q * self.mask("qk", l)
        vg = self.rew[f"v_{l}"] if f"v_{l}" in self.rew else torch.ones(h, v, device=ref.device)
        if "v" in self.kinds and self.apply_masks:
            vg = vg * self.mask("v", l)
        return torch.cat([(q * head).reshape(-1), torch.ones(h * qk, device=ref.device), (vg * head).reshape(-1)])

    def fc1_gate(self, l: int) -> torch.Tensor:
        if self.apply_masks:
            return self.mask("mlp", l)
        return torch.ones(self.dims[l][3], device=self.rew[f"mlp_{l}"].device)

    def fc2_gate(self, l: int) -> torch.Tensor:
        return self.rew[f"mlp_{l}"]

    def attach_to(self, model: nn.Module) -> None:
        """Wrap ``model``'s qkv / fc1 / fc2 (in place) with this indicator's gates."""
        for l, p in enumerate(self.parts):
            if set(self.kinds) & {"heads", "qk", "v"}:
                attach(model, p.qkv, out_scale=lambda l=l: self.qkv_gate(l))
            if "mlp" in self.kinds:
                attach(model, p.fc1, out_scale=lambda l=l: self.fc1_gate(l))
                attach(model, p.fc2, in_scale=lambda l=l: self.fc2_gate(l))


# ------------------------------------------------------------------------------------ resource
class Cost:
    """MACs (or params) of the model as an affine function of the kept counts per block
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""

    def __init__(self, model: nn.Module, metric: str = "macs", family: Family | None = None):
        fam = family or family_of(model)
        measure = fam.cost(model, metric)
        spec = fam.spec(model)
        self.base = float(measure(spec))
        self.coef = []
        for l, b in enumerate(spec.blocks):

            def less(l=l, b=b, **kw):
                s = spec.copy()
                s.blocks[l] = replace(b, **kw)
                return self.base - measure(s)

            self.coef.append(
                (
                    less(qk_dim=b.qk_dim - 1) / b.num_heads,
                    less(v_dim=b.v_dim - 1) / b.num_heads,
                    less(mlp_hidden=b.mlp_hidden - 1),
                )
            )
        self.full = [(b.num_heads * b.qk_dim, b.num_heads * b.v_dim, b.mlp_hidden) for b in spec.blocks]

    def __call__(self, counts: list[tuple]) -> torch.Tensor:
        """``counts[l] = (q/k dim pairs kept, v dims kept, MLP neurons kept)`` (tensors or numbers)."""
        total = torch.tensor(self.base, dtype=torch.float64)
        for (cq, cv, cm), (nq, nv, nm), (fq, fv, fm) in zip(self.coef, counts, self.full):
            total = total - cq * (fq - nq) - cv * (fv - nv) - cm * (fm - nm)
        return total


def kept_counts(ind: Indicator, soft: bool) -> list[tuple]:
    """Per block: (q/k dims, v dims, MLP neurons) kept, from the soft or the hard masks."""
    out = []
    get = ind.soft if soft else ind.hard
    for l, (h, qk, v, m) in enumerate(ind.dims):
        head = get("heads", l) if "heads" in ind.kinds else torch.ones(h)
        head = head.to(torch.float64)
        q = (
            get("qk", l).to(torch.float64).sum(1)
            if "qk" in ind.kinds
            else torch.full((h,), float(qk), dtype=torch.float64)
        )
        vv = (
            get("v", l).to(torch.float64).sum(1)
            if "v" in ind.kinds
            else torch.full((h,), float(v), dtype=torch.float64)
        )
        nm = (
            get("mlp", l).to(torch.float64).sum() if "mlp" in ind.kinds else torch.tensor(float(m), dtype=torch.float64)
        )
        out.append(((head * q.to(head.device)).sum(), (head * vv.to(head.device)).sum(), nm))
    return out


# ----------------------------------------------------------------------------------------- run
def train_indicator(
    model: nn.Module,
    loader,
    cfg,
    opts: AMAPOptions,
    *,
    progress: bool = False,
    weights: dict | None = None,
    family: Family | None = None,
) -> tuple[nn.Module, Indicator, dict]:
    """A wrapped training copy of ``model`` with a trained ``Indicator``; returns (copy, indicator, log)
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""
    fam = family or family_of(model)
    kinds = tuple(cfg.granularity)
    init: dict = {}
    if weights is None:
        weights, init = calibration_statistics(model, loader, kinds, fam)
    train = copy.deepcopy(model).eval()
    wparams = frozen_except(train, opts.train_weights)
    ind = Indicator(model, kinds, weights, opts.threshold, opts.temperature, init, family=fam)
    ind.attach_to(train)
    cost = Cost(model, cfg.metric, fam)
    target = (1 - cfg.reduction) * cost.base
    groups = [
        {"params": list(ind.ind.parameters()), "lr": opts.lr},
        {"params": list(ind.rew.parameters()), "lr": opts.reweight_lr},
    ]
    if wparams:
        groups.append({"params": wparams, "lr": opts.weight_lr})
    optimizer = torch.optim.Adam(groups)

    def penalty():
        return opts.resource * (cost(kept_counts(ind, soft=True)) / target - 1) ** 2

    log = optimise(
        train,
        loader,
        opts.steps,
        optimizer,
        penalty=penalty,
        labels=cfg.labels,
        reference=model,
        progress=progress,
        desc="amap indicator",
    )
    with torch.no_grad():
        log["mask_reduction"] = float(1 - cost(kept_counts(ind, soft=False)) / cost.base)
    log["difference_init_blocks"] = sorted(l for _, l in init)
    return train, ind, log


def run(
    model: nn.Module,
    cfg,
    opts: AMAPOptions,
    *,
    progress: bool = False,
    budget: Budget | None = None,
    family: Family | None = None,
) -> MethodOutput:
    """AMAP on ``model`` under ``cfg``'s budget: indicator training, selection, reweight folding
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""
    fam = family or family_of(model)
    kinds = tuple(cfg.granularity)
    loader = calibration_loader(cfg.data, model, cfg.calib_images, cfg.batch_size, cfg.seed, family=fam)
    train, ind, log = train_indicator(model, loader, cfg, opts, progress=progress, family=fam)
    groups = fam.groups(model, kinds)
    with torch.no_grad():
        scores = [
            (ind.score(g.kind, g.layer).clamp_min(0) + ind.hard(g.kind, g.layer)).to(torch.float64).cpu()
            for g in groups
        ]
    ind.apply_masks = False  # fold the reweight only; the plan removes the channels
    folded = fold(train)
    for p in folded.parameters():
        p.requires_grad_(False)
    plan, achieved = select(folded, groups, scores, budget or cfg.budget(), family=fam)
    extra = {"loss": log["task_loss"], "penalty": log["penalty"], "mask_reduction": log["mask_reduction"]}
    if log["difference_init_blocks"]:
        extra["difference_init_blocks"] = log["difference_init_blocks"]
    return MethodOutput(folded.eval(), plan, achieved, extra)
