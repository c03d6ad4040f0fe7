"""The family adapter: everything the pruning core needs to know about one kind of model.

The core (budget, scorers, seed methods, artifacts, counting, export, bench) never looks inside a
model. It asks the model's ``Family`` (``vitcompress.families.family_of``) for what follows. The
class is split in two.

**The required protocol** (``FamilyProtocol``; abstract, so a family that lacks a piece cannot be
instantiated, and ``FAMILIES.register`` refuses one without a name or counting):

- **recognition**: ``name``, ``title``, ``owns_name`` (model names), ``recognises`` (a module),
  ``input_size`` and ``image_stride`` (input geometry);
- **structure**: ``spec`` (widths read off the modules), ``build`` (an empty model of a spec);
- **slicing**: ``groups`` (coupled slices per kind; ``kinds`` lists the granularities),
  ``slice_state`` (the cut tensors of a plan);
- **counting**: ``arch_info`` (width-independent constants) and a ``counting`` module whose
  ``per_block``, ``macs`` and ``params`` are analytic, equal to ``torch.utils.flop_counter`` and the
  real parameter count (``block_macs``, ``macs`` and ``params`` delegate to it; a family without
  such a module overrides the three methods instead).

**Optional capabilities**, each a class with defaults that a family overrides only where it has
something to say:

- ``Refusals``: ``list_models`` (and ``refused_models``, with the reasons), ``problems`` (what of a
  recognised module cannot be sliced exactly; each becomes part of a one-line refusal),
  ``check_kinds`` (granularities this model cannot prune exactly), ``check_method`` (whether a seed
  method runs on this model; ``methods`` lists them), ``feature_kinds`` (granularities that change
  the width of the model's output);
- ``Sources``: ``create`` (unpruned model from a name; default ``timm.create_model``),
  ``source_of`` (how to rebuild a module vitcompress did not create; ``source_keys`` names the
  keyword arguments it may write), ``dynamic_size_source`` (the same model taking any image size,
  for exports), ``source_kwargs`` (the creation options a source may record, each with its kind:
  anything else is refused when a model is created and when an artifact is read,
  ``check_source``) and ``source_spec`` (the unpruned model's widths, which bound an artifact's
  plan);
- ``Reshaping``: ``identity_plan``, ``spec_after``, ``reference_norms`` (the kept-channel norms of
  the masked reference), ``shrink`` and ``can_remove_block`` (how a spec changes when the budget
  removes a unit); the defaults fit one residual stream;
- ``Costs``: ``token_reduction`` (whether the token reducers apply) with ``token_layout``,
  ``cost`` (``spec -> cost``), ``cost_note`` (one line on how attention is counted, where it
  differs from softmax attention's quadratic cost; shown by ``vitcompress info``);
- ``MethodHooks`` (what the seed methods read): ``parts`` (per block, in order: the attention, its
  fused ``qkv`` and ``proj``, the MLP's ``fc1``/activation/``fc2``, as module paths),
  ``residual_norm_paths``, ``qkv_heads`` and ``head_outputs`` (per-head activations; the defaults
  fit a timm-layout attention: fused ``qkv`` with ``[q | k | v]`` rows, head-major, and a
  ``proj``), ``attention_difference`` (per q/k channel, how much removing it changes the
  attention: AMAP's indicator starts from it). A family that does not override ``parts`` is pruned
  one shot only.

``Family`` combines them; a new family derives from it.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import timm
import torch
from torch import nn

from ..errors import VitCompressError
from ..groups import KINDS, Group
from ..layers import KeptChannelLayerNorm, head_outputs, qkv_heads
from ..plan import Plan, full_plan
from ..spec import SourceModel, Spec, check_kwargs


class Counter(Protocol):
    """A family's analytic counting (usually its ``counting`` module)."""

    def per_block(self, spec: Spec, info: Any, tokens: Sequence[BlockTokens] | None = None) -> list[int]: ...

    def macs(self, spec: Spec, info: Any, tokens: Sequence[BlockTokens] | None = None) -> int: ...

    def params(self, spec: Spec, info: Any) -> int: ...


@dataclass(frozen=True)
class BlockParts:
    """Module paths of one transformer block (relative to the model), for the seed methods.

    ``attn`` and ``mlp`` take the normalised residual tokens ``[B, N, D]`` as their first input;
    ``qkv`` is the fused q/k/v projection (rows ``[q | k | v]``, head-major), ``proj`` the attention
    output projection, ``fc1``/``act``/``fc2`` the MLP's layers (``fc1`` rows and ``fc2`` columns
    are the hidden neurons), ``norm1``/``norm2`` the norms that read the residual stream.
    """

    path: str
    attn: str
    qkv: str
    proj: str
    mlp: str
    fc1: str
    act: str
    fc2: str
    norm1: str
    norm2: str


@dataclass
class BlockTokens:
    """Tokens entering (``t_in``) and leaving (``t_out``) one block, prefix included, and the MACs a
    token reducer adds inside it (``extra_macs``)."""

    t_in: int
    t_out: int
    extra_macs: int = 0


def take(t: torch.Tensor, dim: int, indices) -> torch.Tensor:
    """Rows/columns ``indices`` of ``t`` along ``dim``, as a new contiguous tensor."""
    idx = torch.as_tensor(list(indices), dtype=torch.long, device=t.device)
    return t.detach().index_select(dim, idx).contiguous()


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` (dotted, relative to ``model``) in place of what is there."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


class FamilyProtocol(abc.ABC):
    """What every family must implement (abstract: a family missing one cannot be instantiated).

    Recognition (``owns_name``, ``recognises``, ``input_size``, ``image_stride``), structure
    (``spec``, ``build``), slicing (``groups``, ``slice_state``) and counting (``arch_info``, and
    either a ``counting`` module with ``per_block``/``macs``/``params`` or the three methods
    ``block_macs``/``macs``/``params`` overridden). Everything else is an optional capability with a
    default (``Refusals``, ``Sources``, ``Reshaping``, ``Costs``, ``MethodHooks``)."""

    name: str = ""
    #: one line naming the models of the family (used in refusals and ``vitcompress models``)
    title: str = ""
    kinds: tuple[str, ...] = KINDS
    #: the family's analytic counting (``per_block(spec, info, tokens)``, ``macs(spec, info, tokens)``,
    #: ``params(spec, info)``); ``block_macs``/``macs``/``params`` delegate to it
    counting: Counter | None = None

    # ------------------------------------------------------------------ recognition
    @abc.abstractmethod
    def owns_name(self, name: str) -> bool:
        """Whether the model ``name`` belongs to this family (for timm names: by the module of its
        entry point, cheaply)."""

    @abc.abstractmethod
    def recognises(self, model: nn.Module) -> bool:
        """Whether ``model`` is of this family (its top-level type and stem, not its details)."""

    @abc.abstractmethod
    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model was built for."""

    @abc.abstractmethod
    def image_stride(self, model: nn.Module) -> int:
        """Image sides must be multiples of this (a ViT's patch size; a hybrid's stem stride times
        its projection's patch)."""

    # ---------------------------------------------------------------------------- structure
    @abc.abstractmethod
    def spec(self, model: nn.Module) -> Spec:
        """The model's widths, read off its modules."""

    @abc.abstractmethod
    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """An uninitialised model of ``source``'s architecture with ``spec``'s widths (on ``device``).
        Load weights with ``load_state_dict(state, assign=True)``."""

    # ------------------------------------------------------------------------------ slicing
    @abc.abstractmethod
    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        """The coupling groups of the requested kinds (per-block groups in block order, then
        ``embed`` per stage, then ``depth``)."""

    @abc.abstractmethod
    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        """The state dict of the model cut by ``plan`` (names as in ``build(source, spec_after)``)."""

    # ----------------------------------------------------------------------------- counting
    @abc.abstractmethod
    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> Any:
        """Everything about the model's cost that does not depend on the pruned widths, at its own
        image size or at ``img_size``."""

    def block_macs(self, spec: Spec, info: Any, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
        """MACs per image of each block (``tokens[i]``: what enters and leaves block i)."""
        return self._counting().per_block(spec, info, tokens)

    def macs(self, spec: Spec, info: Any, tokens: Sequence[BlockTokens] | None = None) -> int:
        """MACs per image of a model with ``spec`` (every token in every block by default)."""
        return self._counting().macs(spec, info, tokens)

    def params(self, spec: Spec, info: Any) -> int:
        """Exact parameter count of a model with ``spec``."""
        return self._counting().params(spec, info)

    def _counting(self) -> Counter:
        if self.counting is None:
            raise NotImplementedError(f"the {self.name} family sets no counting module and overrides no count")
        return self.counting

    def missing(self) -> list[str]:
        """What of the required protocol this family lacks (empty: complete): a name, and counting
        (a ``counting`` module, or ``block_macs``, ``macs`` and ``params`` overridden)."""
        out = [] if self.name else ["name"]
        if self.counting is None:
            out += [m for m in ("block_macs", "macs", "params") if getattr(type(self), m) is getattr(FamilyProtocol, m)]
        return out


class Refusals(FamilyProtocol):
    """Optional: which models, granularities and methods a family refuses (default: none refused
    beyond ``kinds`` and ``methods``)."""

    methods: tuple[str, ...] = ("ihp", "gohsp", "amap")

    def list_models(self, pattern: str = "*") -> list[str]:
        """Names of this family that match a glob pattern (default: the timm names it owns)."""
        return [n for n in timm.list_models(pattern) if self.owns_name(n)]

    def refused_models(self, pattern: str = "*") -> dict[str, str]:
        """timm names matching ``pattern`` that belong to this family but are refused (not in
        ``list_models``), each with the reason."""
        return {}

    def problems(self, model: nn.Module) -> list[str]:
        """What of a recognised ``model`` cannot be pruned exactly (empty: supported)."""
        return []

    def check_kinds(self, model: nn.Module, kinds: Iterable[str]) -> None:
        """A one-line error for a granularity this family (or this model) cannot prune exactly."""
        bad = [k for k in kinds if k not in self.kinds]
        if bad:
            raise VitCompressError(
                f"the {self.name} family cannot prune {', '.join(bad)}; pass granularity as a subset of "
                f"{','.join(self.kinds)}",
                params=["granularity"],
            )

    def supported_kinds(self, model: nn.Module, kinds: Iterable[str]) -> tuple[str, ...]:
        """The kinds of ``kinds`` that ``check_kinds`` accepts on ``model`` (each on its own), in order."""
        out = []
        for k in kinds:
            try:
                self.check_kinds(model, (k,))
            except VitCompressError:
                continue
            out.append(k)
        return tuple(out)

    def check_method(self, model: nn.Module, method: str) -> None:
        """A one-line error unless the seed method ``method`` runs on ``model``."""
        runs = self.methods if type(self).parts is not MethodHooks.parts else ()  # the methods read ``parts``
        if method not in runs:
            alternatives = f"one of {', '.join(runs)} or oneshot" if runs else "method=oneshot"
            raise VitCompressError(
                f"method {method} does not run on the {self.name} family; use {alternatives}", params=["method"]
            )

    def feature_kinds(self, model: nn.Module) -> tuple[str, ...]:
        """Granularities whose pruning changes the width of ``model``'s output (a model without a
        classifier outputs its features); pruning them needs the caller's explicit consent."""
        return ()


class Sources(FamilyProtocol):
    """Optional: creating models by name and rebuilding a module vitcompress did not create
    (default: ``timm.create_model``, no rebuild from a module, no dynamic image size)."""

    #: creation options a source of this family may record -> their kind (``spec.check_kwarg``: size,
    #: count, count0, depth, rate, positive, number?, bool, str); nothing else reaches ``create``
    source_kwargs: Mapping[str, str] = {"img_size": "size", "in_chans": "count", "num_classes": "count0"}

    @property
    def source_keys(self) -> tuple[str, ...]:
        """The keyword arguments ``source_of`` may write into a source (besides those a user passes
        when creating a model by name)."""
        return ()

    def create(self, name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """The unpruned model ``name`` (``kwargs`` are creation options such as ``num_classes``)."""
        return timm.create_model(name, pretrained=pretrained, **kwargs)

    def source_of(self, model: nn.Module) -> SourceModel | None:
        """How to rebuild a module vitcompress did not create (None when it cannot tell)."""
        return None

    def check_source(self, source: SourceModel, where: str = "source.kwargs") -> None:
        """``spec.RecordError`` for a creation option this family does not record (a
        ``checkpoint_path`` or any other key outside ``source_kwargs``) or a value of the wrong kind
        (``where`` prefixes the option's name in the message)."""
        check_kwargs(source.kwargs, self.source_kwargs, self.name, where)

    def source_spec(self, source: SourceModel) -> Spec:
        """The widths of the unpruned model ``source`` describes (built on the meta device: shapes only)."""
        with torch.device("meta"):
            return self.spec(self.create(source.name, **source.kwargs))

    def dynamic_size_source(self, source: SourceModel) -> SourceModel | None:
        """``source`` built to accept any image size (a multiple of ``image_stride``), for exports
        with a dynamic image size; None when the family's models cannot."""
        return None


class Reshaping(FamilyProtocol):
    """Optional: how a plan changes a spec and the masked reference (default: one residual stream,
    blocks with heads, q/k, v and MLP widths, any block removable while one stays)."""

    def identity_plan(self, model: nn.Module) -> Plan:
        """The plan that keeps everything of ``model``."""
        return full_plan(self.spec(model))

    def spec_after(self, spec: Spec, plan: Plan) -> Spec:
        """The spec of a model with ``spec`` cut by ``plan`` (plan in that model's numbering)."""
        blocks = []
        for b in plan.blocks:
            lp, new = plan.layers[b], copy.copy(spec.blocks[b])
            new.num_heads, new.qk_dim, new.v_dim, new.mlp_hidden = (
                len(lp.heads),
                len(lp.qk[0]),
                len(lp.v[0]),
                len(lp.mlp),
            )
            blocks.append(new)
        return Spec([len(e) for e in plan.embeds], blocks)

    def reference_norms(self, model: nn.Module, plan: Plan) -> dict[str, nn.Module]:
        """Replacements (path -> module) for the norms of the masked reference that must normalise
        over kept residual channels only. Default: every ``LayerNorm`` as wide as a stage's
        residual stream whose channels the plan prunes (single-stream families)."""
        spec = self.spec(model)
        if len(spec.stage_dims) != 1 or len(plan.embed) == spec.embed_dim:
            return {}
        d = spec.embed_dim
        return {
            n: KeptChannelLayerNorm(m, plan.embed)
            for n, m in model.named_modules()
            if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (d,)
        }

    def shrink(self, spec: Spec, kind: str, index: int, k: int) -> None:
        """Change ``spec`` in place as if ``k`` elements of ``kind`` were removed: ``index`` is the
        block's position in ``spec`` for per-block kinds and ``depth``, the stage for ``embed``.

        The budget calls it on a candidate whose lists are its own and whose block objects are
        shared with the current spec, except the block at ``index`` for per-block kinds (a private
        copy): change that block and the lists, and replace (never edit) any other block."""
        if kind == "embed":
            spec.stage_dims[index] -= k
        elif kind == "depth":
            del spec.blocks[index]
        else:
            b = spec.blocks[index]
            field = {"heads": "num_heads", "qk": "qk_dim", "v": "v_dim", "mlp": "mlp_hidden"}[kind]
            setattr(b, field, getattr(b, field) - k)

    def can_remove_block(self, spec: Spec, index: int) -> bool:
        """Whether the block at position ``index`` of ``spec`` may be removed (at least one stays)."""
        return len(spec.blocks) > 1


class Costs(FamilyProtocol):
    """Optional: token reduction and cost reports (default: no token reduction)."""

    token_reduction: bool = False
    #: one line on how attention MACs are counted where it is not softmax attention's (``info``)
    cost_note: str = ""

    def token_layout(self, info: Any) -> tuple[int, int, bool]:
        """(patch tokens, prefix tokens, whether a class token leads them) entering the first block
        (families with token reduction)."""
        raise NotImplementedError

    def cost(self, model: nn.Module, metric: str = "macs") -> Callable[[Spec], float]:
        """``spec -> cost`` for ``metric`` ('macs' or 'params') at the model's image size."""
        info = self.arch_info(model)
        if metric == "macs":
            return lambda sp: self.macs(sp, info)
        if metric == "params":
            return lambda sp: self.params(sp, info)
        raise ValueError(f"unknown metric {metric!r}")


class MethodHooks(FamilyProtocol):
    """Optional: what the seed methods (ihp, gohsp, amap) read. A family that does not override
    ``parts`` is pruned one shot only (``check_method`` refuses the methods); the per-head
    activations default to a timm-layout attention (fused ``qkv``, ``proj``)."""

    def parts(self, model: nn.Module) -> list[BlockParts]:
        """Module paths of every block, in order."""
        raise VitCompressError(
            f"the seed methods do not run on the {self.name} family; prune with method=oneshot", params=["method"]
        )

    def residual_norm_paths(self, model: nn.Module) -> list[str]:
        """Norms that *read* a residual stream (a scale on their output gates each channel):
        every block's two norms and the final norm(s)."""
        raise VitCompressError(
            f"the seed methods do not run on the {self.name} family; prune with method=oneshot", params=["method"]
        )

    def qkv_heads(self, attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k [B, H, N, qk] and v [B, H, N, v] of attention ``attn`` on its input ``x``."""
        return qkv_heads(attn, x)

    def head_outputs(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Each head's contribution to the attention output (before the proj bias): [H, B, N, D]."""
        return head_outputs(attn, x)

    def attention_difference(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Per q/k channel of attention ``attn`` on its input ``x``: how much removing the channel
        (from q and k) changes each head's attention output, [H, qk] summed over the batch; None
        where it is not measured (softmax attention: AMAP's indicators then start at 1)."""
        return None


class Family(Refusals, Sources, Reshaping, Costs, MethodHooks):
    """Base class of a model family: the required protocol (``FamilyProtocol``) and the optional
    capabilities with their defaults; see the module docstring for the contract."""

    def __repr__(self) -> str:
        return f"<family {self.name}: {self.title}>"
