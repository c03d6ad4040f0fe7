"""The FLatten family: a ViT with focused linear attention (``flatten_deit_*``), pruned like a ViT.

Everything a plain ViT has is coupled and cut as in the ``vit`` family; the attention adds two
tensors that follow its channels:

- ``focus_scale`` (one per q/k channel, ``h * qk + d``) moves with the q/k dim (``qk`` groups) and
  with its head (``heads``);
- the depthwise convolution ``dwc`` (weight and bias per value channel, ``h * v + d``) moves with
  the v dim (``v`` groups) and with its head.

Removing a q/k dim is exact because a zeroed q/k channel adds nothing to the focusing function's
norms nor to ``q . k``; removing a v dim or a head zeroes its ``proj`` input columns. MACs are those
of linear attention (``counting.py``: linear in tokens). Token reduction does not apply (the
depthwise convolution needs every patch token on its grid); exports take one image size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ...groups import Group, Member
from ...plan import Plan
from ...spec import SourceModel, Spec
from ..base import take
from ..vit import ViTFamily
from ..vit.counting import ArchInfo
from . import counting
from .attention import FocusedLinearAttention
from .model import FLattenVisionTransformer


class FLattenFamily(ViTFamily):
    name = "flatten"
    title = "FLatten Transformer (focused linear attention, timm-registered): flatten_deit_*"
    token_reduction = False
    counting = counting
    name_modules = ("vitcompress.families.flatten.model",)
    #: a ViT's creation options and the focusing function's
    source_kwargs = {**ViTFamily.source_kwargs, "focusing_factor": "positive", "kernel_size": "count"}
    cost_note = (
        "attention MACs are focused linear attention's, linear in tokens: per block and head "
        "2*N*qk*v + N*qk for the attention, P*v*kernel^2 for the depthwise convolution on the P patch tokens"
    )

    # ------------------------------------------------------------------ recognition and source
    def recognises(self, model: nn.Module) -> bool:
        return isinstance(model, FLattenVisionTransformer)

    def problems(self, model: nn.Module) -> list[str]:
        problems = super().problems(model)
        for i, blk in enumerate(getattr(model, "blocks", [])):
            if not isinstance(getattr(blk, "attn", None), FocusedLinearAttention):
                problems.append(f"block {i} attention is {type(getattr(blk, 'attn', None)).__name__}")
                break
        return problems

    def source_of(self, model: nn.Module) -> SourceModel | None:
        src = super().source_of(model)
        if src is not None:
            src.kwargs.update(focusing_factor=model.focusing_factor, kernel_size=model.kernel_size)
        return src

    @property
    def source_keys(self) -> tuple[str, ...]:
        return (*super().source_keys, "focusing_factor", "kernel_size")

    def dynamic_size_source(self, source: SourceModel) -> SourceModel | None:
        return None  # the depthwise convolution runs on the fixed patch grid

    # ---------------------------------------------------------------------------- structure
    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """The timm model with ``num_heads=1`` (any width), every block's attention and MLP replaced
        by modules of the spec's widths."""
        kwargs = dict(source.kwargs)
        kwargs.update(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=1)
        d = spec.embed_dim
        with torch.device(device):
            model = self.create(source.name, **kwargs)
            for blk, bs in zip(model.blocks, spec.blocks):
                old = blk.attn
                blk.attn = FocusedLinearAttention(
                    d,
                    bs.num_heads,
                    qkv_bias=old.qkv.bias is not None,
                    proj_bias=old.proj.bias is not None,
                    attn_drop=old.attn_drop.p,
                    proj_drop=old.proj_drop.p,
                    qk_dim=bs.qk_dim,
                    v_dim=bs.v_dim,
                    focusing_factor=old.focusing_factor,
                    kernel_size=old.kernel_size,
                    grid_size=old.grid_size,
                    num_prefix_tokens=old.num_prefix_tokens,
                )
                fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
                blk.mlp.fc1 = nn.Linear(d, bs.mlp_hidden, bias=fc1.bias is not None)
                blk.mlp.fc2 = nn.Linear(bs.mlp_hidden, d, bias=fc2.bias is not None)
        return model

    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        groups = super().groups(model, kinds)
        for g in groups:
            if g.kind not in ("heads", "qk", "v"):
                continue
            attn = model.blocks[g.layer].attn
            h, qk, v = attn.num_heads, attn.qk_dim, attn.v_dim
            p = f"blocks.{g.layer}.attn."
            heads = torch.arange(h)[:, None]
            q_ch = heads * qk + torch.arange(qk)  # [H, qk]
            v_ch = heads * v + torch.arange(v)  # [H, v]
            dwc = [p + "dwc.weight"] + ([p + "dwc.bias"] if attn.dwc.bias is not None else [])
            if g.kind == "heads":
                g.members.append(Member(p + "focus_scale", 0, q_ch))
                g.members += [Member(n, 0, v_ch) for n in dwc]
            elif g.kind == "qk":
                g.members.append(Member(p + "focus_scale", 0, q_ch.reshape(-1, 1)))
            else:
                g.members += [Member(n, 0, v_ch.reshape(-1, 1)) for n in dwc]
        return groups

    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        state = super().slice_state(model, plan)
        for new_i, old_i in enumerate(plan.blocks):
            attn, lp = model.blocks[old_i].attn, plan.layers[old_i]
            q_ch = [h * attn.qk_dim + d for h, dims in zip(lp.heads, lp.qk) for d in dims]
            v_ch = [h * attn.v_dim + d for h, dims in zip(lp.heads, lp.v) for d in dims]
            p = f"blocks.{new_i}.attn."
            state[p + "focus_scale"] = take(attn.focus_scale, 0, q_ch)
            state[p + "dwc.weight"] = take(attn.dwc.weight, 0, v_ch)
            if attn.dwc.bias is not None:
                state[p + "dwc.bias"] = take(attn.dwc.bias, 0, v_ch)
        return state

    # --------------------------------------------------------------------------------- cost
    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> counting.FLattenArchInfo:
        vit = ArchInfo.from_model(model)
        if img_size is not None:
            ps = model.patch_embed.patch_size
            vit = vit.replace(grid=(img_size[0] // ps[0], img_size[1] // ps[1]))
        dwc = model.blocks[0].attn.dwc
        return counting.FLattenArchInfo(vit, dwc.kernel_size[0] * dwc.kernel_size[1], dwc.bias is not None)

    def token_layout(self, info) -> tuple[int, int, bool]:
        return super().token_layout(info.vit)

    # ---------------------------------------------------------------------- for the methods
    def qkv_heads(self, attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The focused q and k (what the attention multiplies) and v, per head."""
        return attn.features(x)

    def head_outputs(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        o = attn.head_values(x)  # [B, H, N, v], the convolution term included
        w = attn.proj.weight.reshape(-1, attn.num_heads, attn.v_dim)
        return torch.einsum("bhnv,dhv->hbnd", o, w)

    def attention_difference(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return attn.qk_removal_effect(x)
