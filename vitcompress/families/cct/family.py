"""The CCT family: Compact Convolutional Transformers from ``vit-pytorch`` (``cct_7_3x1_32``, ...).

Structure of ``vit_pytorch.cct.CCT`` and how it is pruned:

- the **convolutional tokenizer** (``tokenizer.conv_layers``: convolution, ReLU, max pool, one or
  more times) is kept whole, except the last convolution's output channels: they are the tokens'
  channels, so ``embed`` cuts them (ReLU and max pooling act per channel, so this is exact);
- the **position embedding** (``classifier.positional_emb``, learned or sinusoidal) follows
  ``embed``; there is no class token;
- every **encoder layer** (``classifier.blocks.i``) is ``x = x + attn(pre_norm(x))``, then
  ``x = norm1(x)`` (a LayerNorm *on* the residual stream), then ``x = x + linear2(gelu(linear1(x)))``.
  Its attention has a fused ``qkv`` without bias, rows ``[q | k | v]``, head-major (the layout of
  timm's attention), and ``proj``: heads, q/k dims and v dims are coupled as in a ViT; ``linear1``
  rows and ``linear2`` columns are the MLP neurons. Pruned layers use ``PrunedAttention`` (same
  parameter names, any widths);
- **sequence pooling** (``classifier.attention_pool``: one logit per token, softmax over tokens,
  weighted sum) reads the residual stream: its weight's columns follow ``embed``, as do the final
  ``norm`` and the classifier ``fc``'s columns;
- **depth**: removing a layer removes all of it, ``norm1`` included. Because ``norm1`` transforms
  the stream, a zeroed layer is not the identity: the masked reference replaces a removed layer
  by the identity instead of zeroing it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ...attention import attention_probs, split_qkv
from ...errors import VitCompressError
from ...groups import KINDS, LAYER_KINDS, Group, Member
from ...layers import PrunedAttention
from ...meta import source_indices
from ...plan import Plan
from ...spec import BlockSpec, RecordError, SourceModel, Spec
from ..base import BlockParts, Family, take
from . import counting
from . import model as cct_model

BLOCKS = "classifier.blocks"
# encoder-layer parameters on the residual stream, and their axis
BLOCK_EMBED_AXES = {
    "pre_norm.weight": 0,
    "pre_norm.bias": 0,
    "self_attn.qkv.weight": 1,
    "self_attn.proj.weight": 0,
    "self_attn.proj.bias": 0,
    "linear1.weight": 1,
    "norm1.weight": 0,
    "norm1.bias": 0,
    "linear2.weight": 0,
    "linear2.bias": 0,
}
# parameters outside the layers on the residual stream (the last tokenizer convolution is added per model)
STEM_AXES = {
    "classifier.positional_emb": 2,
    "classifier.attention_pool.weight": 1,
    "classifier.norm.weight": 0,
    "classifier.norm.bias": 0,
    "classifier.fc.weight": 1,
}


def attention_dims(attn: nn.Module) -> tuple[int, int, int, float]:
    """(heads, q/k dim, v dim, softmax scale) of vit-pytorch's attention or a ``PrunedAttention``."""
    if isinstance(attn, PrunedAttention):
        return attn.num_heads, attn.qk_dim, attn.v_dim, attn.scale
    h = attn.heads
    d = attn.qkv.in_features // h
    return h, d, d, float(attn.scale)


def last_conv(model: nn.Module) -> str:
    """Path of the tokenizer's last convolution (its output channels are the embedding)."""
    return f"tokenizer.conv_layers.{len(model.tokenizer.conv_layers) - 1}.0"


def _ar(n: int) -> torch.Tensor:
    return torch.arange(n)[:, None]


class CCTFamily(Family):
    name = "cct"
    title = "Compact Convolutional Transformers (vit-pytorch, extra 'cct'): cct_7_3x1_32, cct_14_7x2_224, ..."
    kinds = KINDS
    counting = counting
    #: the timm-style options ``create`` renames and the plain-value arguments of vit-pytorch's ``CCT``
    source_kwargs = {
        **Family.source_kwargs,
        "embed_dim": "count",
        "depth": "depth",
        "num_heads": "count",
        "mlp_ratio": "positive",
        "embedding_dim": "count",
        "n_input_channels": "count",
        "num_layers": "depth",
        "n_conv_layers": "count",
        "kernel_size": "count",
        "stride": "count",
        "padding": "count0",
        "pooling_kernel_size": "count",
        "pooling_stride": "count",
        "pooling_padding": "count0",
        "dropout_rate": "rate",
        "attention_dropout": "rate",
        "stochastic_depth_rate": "rate",
        "positional_embedding": "str",
    }

    # ------------------------------------------------------------------ recognition and source
    def owns_name(self, name: str) -> bool:
        return cct_model.parse(name) is not None

    def list_models(self, pattern: str = "*") -> list[str]:
        return cct_model.list_names(pattern)

    def recognises(self, model: nn.Module) -> bool:
        module = sys.modules.get("vit_pytorch.cct")  # a CCT exists only once vit-pytorch is imported
        return module is not None and isinstance(model, module.CCT)

    def problems(self, model: nn.Module) -> list[str]:
        module = sys.modules["vit_pytorch.cct"]
        problems = []
        cls = model.classifier
        if not cls.seq_pool:
            problems.append("a class token instead of sequence pooling")
        if not hasattr(model, "img_size"):
            problems.append("a CCT not created by vitcompress (create it with vitcompress.create_source_model(name))")
        for i, blk in enumerate(cls.blocks):
            if type(blk) is not module.TransformerEncoderLayer:
                problems.append(f"layer {i} is {type(blk).__name__}")
                break
            if type(blk.self_attn) not in (module.Attention, PrunedAttention):
                problems.append(f"layer {i} attention is {type(blk.self_attn).__name__}")
                break
            if not isinstance(blk.activation, nn.GELU):
                problems.append(f"layer {i} activation {blk.activation!r} is not an nn.GELU module")
                break
        return problems

    def check_source(self, source: SourceModel, where: str = "source.kwargs") -> None:
        """As ``Family.check_source``, with CCT's own words for the options a CCT does not take."""
        for key in source.kwargs:
            at = f"{where}.{key}" if where else str(key)
            if key in cct_model.REFUSED:
                raise RecordError(f"{at} does not apply to {source.name}: {cct_model.REFUSED[key]}")
            if key not in self.source_kwargs:
                raise RecordError(
                    f"unknown option {key!r} for {source.name}{f' ({where})' if where else ''}; CCT takes "
                    f"{', '.join(sorted(self.source_kwargs))}"
                )
        super().check_source(source, where)

    def source_spec(self, source: SourceModel) -> Spec:
        """The unpruned model's widths, built on the CPU (vit-pytorch's constructor reads tensor values)."""
        with torch.device("cpu"):
            return self.spec(self.create(source.name, **source.kwargs))

    def create(self, name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise VitCompressError(
                f"no hub weights for {name}; train it or pass checkpoint=FILE", params=["checkpoint"]
            )
        return cct_model.create(name, **kwargs)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        conv = model.tokenizer.conv_layers[0][0]
        return int(conv.in_channels), int(model.img_size[0]), int(model.img_size[1])

    def image_stride(self, model: nn.Module) -> int:
        stride = 1
        for stage in model.tokenizer.conv_layers:
            for m in stage:
                if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                    s = m.stride
                    stride *= int(s[0] if isinstance(s, tuple) else s)
        return stride

    # ---------------------------------------------------------------------------- structure
    def stem_axis(self, model: nn.Module, name: str) -> int | None:
        """Residual axis of a parameter outside the encoder layers (None: kept whole)."""
        if name.startswith(last_conv(model) + "."):
            return 0
        return STEM_AXES.get(name)

    def spec(self, model: nn.Module) -> Spec:
        blocks = []
        src = source_indices(model, len(model.classifier.blocks))
        for i, blk in enumerate(model.classifier.blocks):
            h, qk, v, scale = attention_dims(blk.self_attn)
            blocks.append(BlockSpec(src[i], h, qk, v, blk.linear1.out_features, scale))
        return Spec(int(model.classifier.norm.normalized_shape[0]), blocks)

    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """vit-pytorch's CCT of the spec's width and depth (built on the CPU: its constructor reads
        tensor values), every layer's attention and MLP replaced by modules of the spec's widths."""
        d = spec.embed_dim
        with torch.device("cpu"):
            model = self.create(source.name, **{**source.kwargs, "embed_dim": d, "depth": spec.depth, "num_heads": 1})
            for blk, bs in zip(model.classifier.blocks, spec.blocks):
                old = blk.self_attn
                blk.self_attn = PrunedAttention(
                    d,
                    bs.num_heads,
                    bs.qk_dim,
                    bs.v_dim,
                    bs.scale,
                    qkv_bias=old.qkv.bias is not None,
                    proj_bias=old.proj.bias is not None,
                    attn_drop=old.attn_drop.p,
                    proj_drop=old.proj_drop.p,
                )
                blk.linear1 = nn.Linear(d, bs.mlp_hidden)
                blk.linear2 = nn.Linear(bs.mlp_hidden, d)
        return model.to(device)

    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        kinds = tuple(kinds)
        out: list[Group] = []
        for i, blk in enumerate(model.classifier.blocks):
            out += self.layer_groups(blk, i, [k for k in LAYER_KINDS if k in kinds])
        if "embed" in kinds:
            d = int(model.classifier.norm.normalized_shape[0])
            g = Group("embed", None, (d,))
            for name, _ in model.named_parameters():
                if name.startswith(BLOCKS + "."):
                    axis = BLOCK_EMBED_AXES.get(name.split(".", 3)[3])
                else:
                    axis = self.stem_axis(model, name)
                if axis is not None:
                    g.members.append(Member(name, axis, _ar(d)))
            out.append(g)
        if "depth" in kinds:
            g = Group("depth", None, (len(model.classifier.blocks),))
            for name, _ in model.named_parameters():
                if name.startswith(BLOCKS + "."):
                    g.members.append(Member(name, None, element=int(name.split(".")[2])))
            out.append(g)
        return out

    def layer_groups(self, blk: nn.Module, layer: int, kinds: Sequence[str]) -> list[Group]:
        """The per-layer groups: fused ``qkv`` rows (``[q | k | v]``, head-major), ``proj`` columns,
        ``linear1`` rows and bias, ``linear2`` columns."""
        h, qk, v, _ = attention_dims(blk.self_attn)
        p = f"{BLOCKS}.{layer}."
        qkv, proj = p + "self_attn.qkv.", p + "self_attn.proj.weight"
        bias = blk.self_attn.qkv.bias is not None
        heads = torch.arange(h)[:, None]
        q_rows = heads * qk + torch.arange(qk)
        k_rows = h * qk + q_rows
        v_rows = 2 * h * qk + heads * v + torch.arange(v)
        v_cols = heads * v + torch.arange(v)

        def rows(index: torch.Tensor) -> list[Member]:
            return [Member(qkv + "weight", 0, index)] + ([Member(qkv + "bias", 0, index)] if bias else [])

        out = []
        for kind in kinds:
            if kind == "heads":
                g = Group(
                    "heads", layer, (h,), rows(torch.cat([q_rows, k_rows, v_rows], 1)) + [Member(proj, 1, v_cols)]
                )
            elif kind == "qk":
                g = Group("qk", layer, (h, qk), rows(torch.stack([q_rows, k_rows], -1).reshape(h * qk, 2)))
            elif kind == "v":
                g = Group("v", layer, (h, v), rows(v_rows.reshape(-1, 1)) + [Member(proj, 1, v_cols.reshape(-1, 1))])
            else:
                m = _ar(blk.linear1.out_features)
                g = Group(
                    "mlp",
                    layer,
                    (len(m),),
                    [
                        Member(p + "linear1.weight", 0, m),
                        Member(p + "linear1.bias", 0, m),
                        Member(p + "linear2.weight", 1, m),
                    ],
                )
            out.append(g)
        return out

    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        embed = plan.embed
        state: dict[str, torch.Tensor] = {}
        for name, t in model.state_dict(keep_vars=True).items():
            if name.startswith(BLOCKS + "."):
                continue
            axis = self.stem_axis(model, name)
            state[name] = t.detach().clone() if axis is None else take(t, axis, embed)
        for new_i, old_i in enumerate(plan.blocks):
            blk, lp = model.classifier.blocks[old_i], plan.layers[old_i]
            h, qk, v, _ = attention_dims(blk.self_attn)
            q = [hd * qk + d for hd, dims in zip(lp.heads, lp.qk) for d in dims]
            rows = (
                q
                + [h * qk + r for r in q]
                + [2 * h * qk + hd * v + d for hd, dims in zip(lp.heads, lp.v) for d in dims]
            )
            cols = [hd * v + d for hd, dims in zip(lp.heads, lp.v) for d in dims]
            t = {n: take(blk.get_parameter(n), a, embed) for n, a in BLOCK_EMBED_AXES.items()}
            t["self_attn.qkv.weight"] = take(t["self_attn.qkv.weight"], 0, rows)
            if blk.self_attn.qkv.bias is not None:
                t["self_attn.qkv.bias"] = take(blk.self_attn.qkv.bias, 0, rows)
            t["self_attn.proj.weight"] = take(t["self_attn.proj.weight"], 1, cols)
            t["linear1.weight"] = take(t["linear1.weight"], 0, lp.mlp)
            t["linear1.bias"] = take(blk.linear1.bias, 0, lp.mlp)
            t["linear2.weight"] = take(t["linear2.weight"], 1, lp.mlp)
            state.update({f"{BLOCKS}.{new_i}.{n}": x for n, x in t.items()})
        return state

    def reference_norms(self, model: nn.Module, plan: Plan) -> dict[str, nn.Module]:
        """Kept-channel LayerNorms (as every family) and, for every removed layer, the identity (a
        layer's ``norm1`` transforms the stream, so zeroing the layer would not remove it)."""
        out = super().reference_norms(model, plan)
        kept = set(plan.blocks)
        for i in range(len(model.classifier.blocks)):
            if i not in kept:
                out = {k: m for k, m in out.items() if not k.startswith(f"{BLOCKS}.{i}.")}
                out[f"{BLOCKS}.{i}"] = nn.Identity()
        return out

    # --------------------------------------------------------------------------------- cost
    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> counting.CCTArchInfo:
        size = tuple(model.img_size) if img_size is None else tuple(img_size)
        convs, grid = counting.tokenizer_convs(model.tokenizer, size)
        cls = model.classifier
        return counting.CCTArchInfo(
            convs=convs,
            tokens=grid[0] * grid[1],
            grid=grid,
            pos_embed=cls.positional_emb is not None,
            num_classes=cls.fc.out_features,
            qkv_bias=cls.blocks[0].self_attn.qkv.bias is not None,
        )

    def token_layout(self, info) -> tuple[int, int, bool]:
        return info.tokens, 0, False

    # ---------------------------------------------------------------------- for the methods
    def parts(self, model: nn.Module) -> list[BlockParts]:
        out = []
        for i in range(len(model.classifier.blocks)):
            p = f"{BLOCKS}.{i}"
            out.append(
                BlockParts(
                    path=p,
                    attn=f"{p}.self_attn",
                    qkv=f"{p}.self_attn.qkv",
                    proj=f"{p}.self_attn.proj",
                    mlp=f"{p}.linear1",  # the MLP's input is linear1's
                    fc1=f"{p}.linear1",
                    act=f"{p}.activation",
                    fc2=f"{p}.linear2",
                    norm1=f"{p}.pre_norm",
                    norm2=f"{p}.norm1",
                )
            )
        return out

    def residual_norm_paths(self, model: nn.Module) -> list[str]:
        return [n for p in self.parts(model) for n in (p.norm1, p.norm2)] + ["classifier.norm"]

    def qkv_heads(self, attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, qk, v, _ = attention_dims(attn)
        return split_qkv(attn.qkv(x), h, qk, v)

    def head_outputs(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h, _, v, scale = attention_dims(attn)
        q, k, vv = self.qkv_heads(attn, x)
        o = attention_probs(q, k, scale) @ vv
        return torch.einsum("bhnv,dhv->hbnd", o, attn.proj.weight.reshape(-1, h, v))
