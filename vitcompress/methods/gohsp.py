"""GOHSP: graph-based head ranking, then ADMM towards heterogeneous structured sparsity.

Reading of the paper (see ``docs/methods.md``):

1. **Head graph.** Nodes are all attention heads. Head i of block l and head j of block l+1 are
   joined by an undirected edge of weight ``1 - |cos(o_i, o_j)|``, where ``o`` is a head's
   contribution to the residual stream on the calibration images (its attention output through
   its ``proj`` columns); blocks whose outputs differ in shape (different stages) are not joined.
   A random walk follows edges in proportion to their weights (rows
   normalised) and, with probability ``1 - damping``, jumps to a uniformly random head (PageRank);
   power iteration gives its stationary distribution ``pi``. A head whose output repeats a head of
   a neighbouring block has a near-zero edge to it, collects less stationary mass and ranks low.
2. **Head score** = ``pi / pi_0 * ||W_head||^norm_power`` where ``pi_0`` is the stationary vector of
   the same graph with all edge weights equal (this removes the effect of a head's position: first
   and last blocks have one neighbouring block, the others two) and ``||W_head||`` is the L2 norm of
   the head's q/k/v rows and ``proj`` columns. Other kinds (q/k dims, v dims, MLP neurons,
   embedding channels) are scored by their L2 weight norm.
3. **Heterogeneous budgets.** The core's budget selection over these scores gives a plan whose
   per-block head/dim/neuron counts differ from block to block; those counts define the
   structured-sparse set S (at most that many heads, dims per head and neurons in each block).
4. **ADMM.** Training steps on ``loss + rho/2 * ||W - Z + U||^2``; every ``steps_per_round`` steps
   ``Z = project_S(W + U)`` (keep, per block, the structures with the largest L2 norm: heads first,
   then q/k and v dims inside the kept heads, MLP neurons; all else zeroed), ``U += W - Z`` and
   ``rho *= rho_growth`` (with ``U /= rho_growth``: U is the dual variable scaled by 1/rho). Z
   starts as W with everything outside the graph-ranked plan zeroed.
5. **Hard prune** to ``project_S(W)`` through the core's slicers, then optional fine-tuning with
   the project's training loop (``training.fit``), distilling from the unpruned input model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..budget import Budget, select
from ..data import calibration_loader
from ..distill import DistillConfig
from ..errors import VitCompressError
from ..families import Family, family_of
from ..groups import Group, reduce_group, zero_removed
from ..plan import LayerPlan, Plan
from ..training import TrainConfig, fit
from .activations import block_inputs
from .base import MethodOptions, MethodOutput, check_positive
from .optim import optimise

KIND_SUPPORT = ("heads", "qk", "v", "mlp", "embed")


@dataclass
class GOHSPOptions(MethodOptions):
    """Hyperparameters of GOHSP's ranking, ADMM and fine-tuning stages."""

    damping: float = 0.85  # probability of following an edge (PageRank damping)
    power_iters: int = 1000  # maximum power iterations
    tol: float = 1e-12  # stop when the L1 change of pi falls below this
    norm_power: float = 1.0  # exponent of the head weight norm in the head score
    rounds: int = 5  # ADMM rounds (Z/U updates)
    steps_per_round: int = 10  # training steps between Z/U updates
    lr: float = 3e-4  # Adam learning rate of the ADMM training steps
    rho: float = 0.1  # initial ADMM penalty
    rho_growth: float = 2.0  # rho multiplier after every round
    finetune_steps: int = 0  # training steps on the hard-pruned model (0: none)
    finetune_lr: float = 1e-4

    def validate(self) -> None:
        if not 0 < self.damping < 1:
            raise VitCompressError(f"method option damping must be in (0, 1), got {self.damping}")
        check_positive(self, "power_iters", "steps_per_round", "rho_growth", "lr", "finetune_lr")
        check_positive(self, "tol", "rounds", "rho", "finetune_steps", "norm_power", allow_zero=True)


# ------------------------------------------------------------------------------------ graph ranking
def head_similarity(model: nn.Module, loader, family: Family | None = None) -> list[torch.Tensor | None]:
    """``|cos|`` between the outputs of the heads of block l and block l+1: one [H_l, H_l+1] per l;
    None where the two blocks' outputs differ in shape (consecutive blocks of different stages of a
    multi-stage family), which are not joined in the graph. ``family``: the model's, when the
    caller already knows it (else asked with ``family_of``)."""
    fam = family or family_of(model)
    attns = [model.get_submodule(p.attn) for p in fam.parts(model)]
    L = len(attns)
    heads = [b.num_heads for b in fam.spec(model).blocks]
    dots: list[torch.Tensor | None] = [torch.zeros(heads[l], heads[l + 1], dtype=torch.float64) for l in range(L - 1)]
    sq = [torch.zeros(h, dtype=torch.float64) for h in heads]
    with torch.no_grad():
        for attn_in, _ in block_inputs(model, loader, fam):
            prev = None
            for l, attn in enumerate(attns):
                o = fam.head_outputs(attn, attn_in[l]).flatten(1).float()  # [H, B*N*D]
                sq[l] += (o * o).sum(1).to(torch.float64).cpu()
                if prev is not None and dots[l - 1] is not None:
                    if prev.shape[1] == o.shape[1]:
                        dots[l - 1] += (prev @ o.T).to(torch.float64).cpu()
                    else:
                        dots[l - 1] = None
                prev = o
    return [
        None
        if dots[l] is None
        else (dots[l] / (sq[l][:, None] * sq[l + 1][None, :]).clamp_min(1e-300).sqrt()).abs().clamp(0, 1)
        for l in range(L - 1)
    ]


def head_graph(sims: list[torch.Tensor | None], heads: list[int]) -> torch.Tensor:
    """Symmetric adjacency over all heads (block-major): edge l,i -- l+1,j of weight 1 - sims[l][i, j]
    (no edges where ``sims[l]`` is None)."""
    off = [0]
    for h in heads:
        off.append(off[-1] + h)
    a = torch.zeros(off[-1], off[-1], dtype=torch.float64)
    for l, s in enumerate(sims):
        if s is None:
            continue
        w = (1 - s.to(torch.float64)).clamp_min(0)
        a[off[l] : off[l + 1], off[l + 1] : off[l + 2]] = w
        a[off[l + 1] : off[l + 2], off[l] : off[l + 1]] = w.T
    return a


def stationary(adj: torch.Tensor, damping: float = 0.85, iters: int = 1000, tol: float = 1e-12) -> torch.Tensor:
    """Stationary distribution of the damped random walk on ``adj`` (power iteration).

    Rows are normalised to transition probabilities (a node without edges jumps uniformly); with
    probability ``1 - damping`` the walk restarts at a uniformly random node. Returns a probability
    vector (non-negative, sums to 1).
    """
    n = adj.shape[0]
    deg = adj.sum(1, keepdim=True)
    p = torch.where(deg > 0, adj / deg.clamp_min(1e-300), torch.full_like(adj, 1.0 / n))
    pi = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for _ in range(iters):
        new = damping * (pi @ p) + (1 - damping) / n
        new = new / new.sum()
        done = (new - pi).abs().sum() < tol
        pi = new
        if done:
            break
    return pi


def head_ranking(model: nn.Module, loader, opts: GOHSPOptions, family: Family | None = None) -> dict:
    """``{'pi', 'pi_0', 'scores': [per-block head scores]}`` (see the module docstring; ``family``:
    the model's, when the caller already knows it, else asked with ``family_of``)."""
    fam = family or family_of(model)
    heads = [b.num_heads for b in fam.spec(model).blocks]
    sims = head_similarity(model, loader, fam)
    pi = stationary(head_graph(sims, heads), opts.damping, opts.power_iters, opts.tol)
    flat = [None if s is None else torch.zeros_like(s) for s in sims]
    pi0 = stationary(head_graph(flat, heads), opts.damping, opts.power_iters, opts.tol)
    rel = pi / pi0
    params = dict(model.named_parameters())
    norms = [reduce_group(g, torch.square, params).sqrt() for g in fam.groups(model, ("heads",))]
    scores, o = [], 0
    for l, h in enumerate(heads):
        n = norms[l].cpu().to(torch.float64)
        scores.append(rel[o : o + h] * (n / n.mean().clamp_min(1e-30)) ** opts.norm_power)
        o += h
    return {"pi": pi, "pi_0": pi0, "similarity": sims, "scores": scores}


# ---------------------------------------------------------------------------- structured projection
def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores.to(torch.float64), k).indices.tolist())


def plan_like(
    model: nn.Module, shape: Plan, groups: list[Group], scores: list[torch.Tensor], family: Family | None = None
) -> Plan:
    """A plan with ``shape``'s counts (embed channels; per block heads, q/k and v dims per head, MLP
    neurons) keeping, for each pruned kind, the elements with the highest ``scores``: heads first,
    then q/k and v dims inside the kept heads. ``family``: the model's, when the caller already
    knows it (else asked with ``family_of``)."""
    by = {(g.kind, g.layer): s for g, s in zip(groups, scores)}
    embeds = [
        _top(by[("embed", g)], len(kept)) if ("embed", g) in by else list(kept)
        for g, kept in zip([None] if len(shape.embeds) == 1 else range(len(shape.embeds)), shape.embeds)
    ]
    spec = (family or family_of(model)).spec(model)
    layers = {}
    for b in shape.blocks:
        lp = shape.layers[b]
        qk_full, v_full, m_full = spec.blocks[b].qk_dim, spec.blocks[b].v_dim, spec.blocks[b].mlp_hidden
        heads = _top(by[("heads", b)], len(lp.heads)) if ("heads", b) in by else list(lp.heads)
        qk = [_top(by[("qk", b)][h], len(lp.qk[0])) if ("qk", b) in by else list(range(qk_full)) for h in heads]
        v = [_top(by[("v", b)][h], len(lp.v[0])) if ("v", b) in by else list(range(v_full)) for h in heads]
        mlp = _top(by[("mlp", b)], len(lp.mlp)) if ("mlp", b) in by else list(range(m_full))
        layers[b] = LayerPlan(heads, qk, v, mlp)
    plan = Plan(embeds[0], list(shape.blocks), layers, embeds[1:])
    plan.validate()
    return plan


def zero_outside(
    model: nn.Module, tensors: dict[str, torch.Tensor], groups: list[Group], plan: Plan
) -> dict[str, torch.Tensor]:
    """Copies of ``tensors`` with every element of ``groups`` that ``plan`` removes set to zero."""
    out = {n: t.detach().clone() for n, t in tensors.items()}
    zero_removed(out, groups, plan)
    return out


def project(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    groups: list[Group],
    shape: Plan,
    family: Family | None = None,
) -> tuple[dict[str, torch.Tensor], Plan]:
    """Projection onto the structured-sparse set of ``shape``'s counts: (projected tensors, plan)."""
    scores = [reduce_group(g, torch.square, tensors) for g in groups]
    plan = plan_like(model, shape, groups, scores, family)
    return zero_outside(model, tensors, groups, plan), plan


def removed_share(model: nn.Module, tensors: dict[str, torch.Tensor], groups: list[Group], plan: Plan) -> float:
    """||part of the tensors that ``plan`` removes|| / ||tensors|| (L2 over the group tensors)."""
    kept = zero_outside(model, tensors, groups, plan)
    tot = sum(float(t.detach().to(torch.float64).square().sum()) for t in tensors.values())
    k = sum(float(t.to(torch.float64).square().sum()) for t in kept.values())
    return max(tot - k, 0.0) ** 0.5 / max(tot, 1e-300) ** 0.5


def admm(
    model: nn.Module,
    train: nn.Module,
    loader,
    groups: list[Group],
    shape: Plan,
    opts: GOHSPOptions,
    *,
    labels: str = "auto",
    progress: bool = False,
    family: Family | None = None,
) -> dict:
    """ADMM on ``train`` (a copy of ``model``, trained in place) towards ``shape``'s sparse set
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""
    fam = family or family_of(model)
    params = dict(train.named_parameters())
    names = sorted({m.param for g in groups for m in g.members})
    W = {n: params[n] for n in names}
    Z = zero_outside(model, W, groups, shape)
    U = {n: torch.zeros_like(W[n]) for n in names}
    state = {"rho": opts.rho, "Z": Z, "plans": []}
    share0 = removed_share(model, W, groups, shape)

    def penalty():
        z, rho = state["Z"], state["rho"]
        return rho / 2 * sum(((W[n] - z[n] + U[n]) ** 2).sum() for n in names)

    def after_step(step: int):
        if (step + 1) % opts.steps_per_round:
            return
        with torch.no_grad():
            v = {n: W[n].detach() + U[n] for n in names}
            z, plan = project(model, v, groups, shape, fam)
            for n in names:
                U[n] += W[n].detach() - z[n]
                U[n] /= opts.rho_growth  # scaled dual u = y / rho: rescale when rho rises
            state["Z"] = z
            state["rho"] *= opts.rho_growth
            state["plans"].append(plan)

    optimizer = torch.optim.Adam(list(train.parameters()), lr=opts.lr)
    log = optimise(
        train,
        loader,
        opts.rounds * opts.steps_per_round,
        optimizer,
        penalty=penalty,
        after_step=after_step,
        labels=labels,
        reference=model,
        progress=progress,
        desc="gohsp admm",
    )
    return {"loss": log, "rho_final": state["rho"], "removed_share_before": share0, "Z": state["Z"], "U": U}


# -------------------------------------------------------------------------------------------- run
def finetune(
    pruned: nn.Module, teacher: nn.Module, cfg, opts: GOHSPOptions, *, progress: bool = False, log: dict | None = None
) -> nn.Module:
    """``opts.finetune_steps`` steps of the project's training loop on ``cfg.data``'s training split,
    distilling from ``teacher`` (the unpruned input model); returns the fine-tuned model."""
    for p in pruned.parameters():
        p.requires_grad_(True)
    tcfg = TrainConfig(
        data=cfg.data,
        epochs=1,
        max_steps_per_epoch=opts.finetune_steps,
        lr=opts.finetune_lr,
        min_lr=opts.finetune_lr,
        warmup_epochs=0.0,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=progress,
        device=str(next(pruned.parameters()).device),
    )
    res = fit(pruned, tcfg, teacher=teacher, distill=DistillConfig())
    if log is not None:
        log["finetune"] = {"train_loss": res.history[-1]["train_loss"], "val": res.val}
    for p in res.model.parameters():
        p.requires_grad_(False)
    return res.model.eval()


def scores_for(model: nn.Module, groups: list[Group], head_scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Graph-based scores for head groups, L2 weight norms for every other group."""
    params = dict(model.named_parameters())
    out = []
    for g in groups:
        if g.kind == "heads":
            out.append(head_scores[g.layer].to(torch.float64))
        else:
            out.append(reduce_group(g, torch.square, params).sqrt())
    return out


def run(
    model: nn.Module,
    cfg,
    opts: GOHSPOptions,
    *,
    progress: bool = False,
    budget: Budget | None = None,
    family: Family | None = None,
) -> MethodOutput:
    """GOHSP on ``model`` under ``cfg``'s budget: ranking, heterogeneous budgets, ADMM, hard prune
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""
    fam = family or family_of(model)
    kinds = tuple(cfg.granularity)
    loader = calibration_loader(cfg.data, model, cfg.calib_images, cfg.batch_size, cfg.seed, family=fam)
    ranking = head_ranking(model, loader, opts, fam)
    groups = fam.groups(model, kinds)
    budget = budget or cfg.budget()
    shape, achieved = select(model, groups, scores_for(model, groups, ranking["scores"]), budget, family=fam)
    train = copy.deepcopy(model).eval()
    for p in train.parameters():
        p.requires_grad_(True)
    log = admm(model, train, loader, groups, shape, opts, labels=cfg.labels, progress=progress, family=fam)
    params = dict(train.named_parameters())
    w = {n: params[n] for n in sorted({m.param for g in groups for m in g.members})}
    _, plan = project(model, w, groups, shape, fam)
    log["removed_share_after"] = removed_share(model, w, groups, plan)
    for p in train.parameters():
        p.requires_grad_(False)
    extra = {
        "loss": log["loss"],
        "rho_final": log["rho_final"],
        "removed_share": [log["removed_share_before"], log["removed_share_after"]],
        "stationary": [round(float(x), 6) for x in ranking["pi"]],
        "head_scores": [[round(float(x), 6) for x in s] for s in ranking["scores"]],
    }

    finish = None
    if opts.finetune_steps > 0:

        def finish(pruned: nn.Module) -> nn.Module:
            return finetune(pruned, model, cfg, opts, progress=progress, log=extra)

    return MethodOutput(train.eval(), plan, achieved, extra, finish)
