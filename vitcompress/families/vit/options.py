"""A ViT's constructor options, read off its modules, and the source that rebuilds it.

A module vitcompress did not create is rebuilt from its timm name (``pretrained_cfg``) and the
options read here: every ``VisionTransformer`` option that changes the module tree or the forward
(pooling, norms and their epsilon, class/register tokens, position embedding, activation, MLP and
block type, biases, qk/attention/MLP norms, layer scale, image geometry). Options that are not
JSON values are written as names (``ENCODED``) that ``decode`` turns back into timm's classes. The
source records only the options that differ from the name's defaults (and always the image
geometry and classes). ``check_rebuild`` then builds the source on the meta device and compares it
with the module, module by module: a module whose configuration cannot be read back is refused in
one line naming the first difference.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import timm
import torch
from timm.layers import GluMlp, LayerNorm, Mlp, RmsNorm, SwiGLU, get_act_layer
from timm.layers.create_act import _ACT_LAYER_DEFAULT
from timm.models.vision_transformer import Block, ParallelScalingBlock, ParallelThingsBlock, ResPostBlock
from torch import nn

from ...errors import VitCompressError
from .blocks import is_parallel

NORMS = {"layernorm": LayerNorm, "rmsnorm": RmsNorm}
MLPS = {"mlp": Mlp, "glu": GluMlp, "glu_gate_first": partial(GluMlp, gate_last=False), "swiglu": SwiGLU}
BLOCKS = {
    "block": Block,
    "res_post": ResPostBlock,
    "parallel_scaling": ParallelScalingBlock,
    "parallel_scaling_fused": partial(ParallelScalingBlock, fuse_out_proj=True),
    "parallel_things": ParallelThingsBlock,
}
#: options written as names (decoded by ``decode``); ``norm_eps``/``embed_norm_eps`` go with the norms
ENCODED = ("norm_layer", "embed_norm_layer", "mlp_layer", "block_fn", "act_layer")
#: every key ``source_of`` may write, besides the keys a user passes at creation
SOURCE_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "class_token",
    "reg_tokens",
    "no_embed_class",
    "pos_embed",
    "pre_norm",
    "final_norm",
    "fc_norm",
    "pool_include_prefix",
    "dynamic_img_size",
    "dynamic_img_pad",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "proj_bias",
    "qk_norm",
    "scale_attn_norm",
    "scale_mlp_norm",
    "init_values",
    "act_layer",
    "norm_layer",
    "norm_eps",
    "embed_norm_layer",
    "embed_norm_eps",
    "mlp_layer",
    "block_fn",
)
ALWAYS = ("img_size", "patch_size", "in_chans", "num_classes")


def _act_table() -> dict[tuple[type, str], str]:
    table: dict[tuple[type, str], str] = {}
    for key, cls in _ACT_LAYER_DEFAULT.items():
        try:
            m = cls()
        except TypeError:
            continue
        if not any(True for _ in m.parameters()):
            table.setdefault((type(m), m.extra_repr()), key)
    table[(nn.GELU, "approximate='none'")] = "gelu"
    table[(nn.GELU, "approximate='tanh'")] = "gelu_tanh"
    table[(nn.Sigmoid, "")] = "sigmoid"
    table[(nn.Tanh, "")] = "tanh"
    return table


ACTS = _act_table()


def act_key(act: nn.Module) -> str | None:
    """timm's name of an activation module (None: not one timm builds by name, or with parameters)."""
    return ACTS.get((type(act), act.extra_repr()))


def norm_key(norm: nn.Module) -> tuple[str, float] | None:
    """(name, epsilon) of a norm over the last axis with affine weights (None: Identity)."""
    if isinstance(norm, nn.Identity):
        return None
    if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None:
        return "layernorm", float(norm.eps)
    if type(norm) is RmsNorm and norm.elementwise_affine:
        return "rmsnorm", float(norm.eps)
    raise VitCompressError(
        f"norm {type(norm).__name__} is not supported (LayerNorm and RmsNorm with affine weights are); "
        "build the model with norm_layer='layernorm' or 'rmsnorm'"
    )


def mlp_key(mlp: nn.Module) -> str:
    if type(mlp) is SwiGLU:
        return "swiglu"
    if type(mlp) is GluMlp:
        return "glu" if mlp.gate_last else "glu_gate_first"
    return "mlp"


def block_key(blk: nn.Module) -> str:
    if isinstance(blk, ParallelScalingBlock):
        return "parallel_scaling_fused" if blk.out_proj is not None else "parallel_scaling"
    return {Block: "block", ResPostBlock: "res_post", ParallelThingsBlock: "parallel_things"}.get(type(blk), "")


def ratio(width: int, dim: int) -> float:
    """An ``mlp_ratio`` with ``int(dim * ratio) == width`` (a plain quotient may round below it)."""
    r = width / dim
    return r if int(dim * r) == width else (width + 0.5) / dim


def read(model: nn.Module) -> dict[str, Any]:
    """Every source option of ``model`` (a timm ``VisionTransformer``), in the JSON encoding."""
    pe, blk = model.patch_embed, model.blocks[0]
    d = model.embed_dim
    o: dict[str, Any] = {
        "img_size": list(pe.img_size) if pe.img_size is not None else None,
        "patch_size": list(pe.patch_size),
        "in_chans": int(getattr(pe, "in_chans", None) or pe.proj.in_channels),
        "num_classes": int(model.num_classes),
        "global_pool": model.global_pool,
        "class_token": model.cls_token is not None,
        "reg_tokens": int(model.num_reg_tokens),
        "no_embed_class": bool(model.no_embed_class),
        "pos_embed": "learn" if model.pos_embed is not None else "none",
        "pre_norm": not isinstance(model.norm_pre, nn.Identity),
        "final_norm": not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        "fc_norm": not isinstance(model.fc_norm, nn.Identity),
        "pool_include_prefix": bool(model.pool_include_prefix),
        "dynamic_img_size": bool(model.dynamic_img_size),
        "dynamic_img_pad": bool(getattr(pe, "dynamic_img_pad", False)),
        "embed_dim": int(d),
        "depth": len(model.blocks),
        "block_fn": block_key(blk),
    }
    pe_norm = norm_key(getattr(pe, "norm", nn.Identity()))
    o["embed_norm_layer"], o["embed_norm_eps"] = pe_norm if pe_norm else (None, None)
    if is_parallel(blk):
        o.update(
            num_heads=blk.num_heads,
            mlp_ratio=ratio(blk.in_split[0], d),
            qkv_bias=blk.in_proj.bias is not None,
            proj_bias=(blk.out_proj or blk.attn_out_proj).bias is not None,
            qk_norm=not isinstance(blk.q_norm, nn.Identity),
            scale_attn_norm=False,
            scale_mlp_norm=False,
            init_values=1e-5 if hasattr(blk.ls, "gamma") else None,
            act_layer=act_key(blk.mlp_act),
            mlp_layer="mlp",
        )
        norm = blk.in_norm
    elif isinstance(blk, (Block, ResPostBlock)):
        mlp = blk.mlp
        fc1 = getattr(mlp, "fc1_g", None) or mlp.fc1
        o.update(
            num_heads=blk.attn.num_heads,
            mlp_ratio=ratio(fc1.out_features * (2 if isinstance(mlp, GluMlp) else 1), d),
            qkv_bias=blk.attn.qkv.bias is not None,
            proj_bias=blk.attn.proj.bias is not None,
            qk_norm=not isinstance(blk.attn.q_norm, nn.Identity),
            scale_attn_norm=not isinstance(blk.attn.norm, nn.Identity),
            scale_mlp_norm=not isinstance(mlp.norm, nn.Identity),
            init_values=1e-5 if hasattr(getattr(blk, "ls1", None), "gamma") else None,
            act_layer=act_key(mlp.act),
            mlp_layer=mlp_key(mlp),
        )
        norm = blk.norm1
    else:
        raise VitCompressError(f"block {type(blk).__name__} is not supported")
    o["norm_layer"], o["norm_eps"] = norm_key(norm) or (None, None)
    return o


def decode(kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm ``create_model`` keyword arguments from source kwargs (names -> classes, epsilons bound)."""
    k = dict(kwargs)
    for key, eps_key in (("norm_layer", "norm_eps"), ("embed_norm_layer", "embed_norm_eps")):
        eps = k.pop(eps_key, None)
        name = k.get(key)
        if isinstance(name, str) and name.replace("_", "").lower() in NORMS:
            cls = NORMS[name.replace("_", "").lower()]
            k[key] = partial(cls, eps=eps) if eps is not None else cls
    if isinstance(k.get("mlp_layer"), str):
        k["mlp_layer"] = MLPS[k["mlp_layer"]]
    if isinstance(k.get("block_fn"), str):
        k["block_fn"] = BLOCKS[k["block_fn"]]
    if isinstance(k.get("act_layer"), str):
        k["act_layer"] = get_act_layer(k["act_layer"])
    return k


def source_kwargs(model: nn.Module, template: nn.Module) -> dict[str, Any]:
    """The options of ``model`` that differ from ``template`` (its name's default model), and the
    image geometry and classes; each norm with its epsilon."""
    mine, default = read(model), read(template)
    out = {}
    for key, value in mine.items():
        if key in ALWAYS or value != default.get(key):
            out[key] = value
    if "global_pool" in out:  # timm's default fc_norm follows global_pool
        out["fc_norm"] = mine["fc_norm"]
    for key, eps in (("norm_layer", "norm_eps"), ("embed_norm_layer", "embed_norm_eps")):
        if key in out or eps in out:
            out[key], out[eps] = mine[key], mine[eps]
    if out.get("act_layer", "") is None or out.get("norm_layer", "") is None:
        raise VitCompressError("cannot read the activation or norm of this model back as a timm option")
    return {k: v for k, v in out.items() if v is not None or k in ("init_values", "embed_norm_layer")}


# attributes that do not change what a module computes in eval mode (or are checked another way)
_IGNORED = {
    "training",
    "inplace",
    "p",
    "drop_prob",
    "scale_by_keep",
    "grad_checkpointing",
    "weight_init_mode",
    "fix_init",
    "init_values",
}


def describe(module: nn.Module) -> str:
    """What a module computes, for comparing a rebuilt model with the original (activations and norms
    by their timm names, everything else by class, public scalar attributes and own tensor shapes)."""
    if isinstance(module, (nn.Dropout, nn.Identity)) or type(module).__name__ in ("DropPath", "PatchDropout"):
        return "identity in eval"
    key = act_key(module)
    if key is not None:
        return f"activation {key}"
    if isinstance(module, (nn.LayerNorm, RmsNorm)):
        try:
            name, eps = norm_key(module) or ("", 0.0)
        except VitCompressError:
            name, eps = type(module).__name__, getattr(module, "eps", 0.0)
        return f"{name}({tuple(module.normalized_shape)}, eps={eps:g})"
    attrs = {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and k not in _IGNORED and isinstance(v, (bool, int, float, str, tuple))
    }
    tensors = [
        f"{n}{tuple(t.shape)}" for n, t in [*module._parameters.items(), *module._buffers.items()] if t is not None
    ]
    return f"{type(module).__name__} {sorted(attrs.items())} {tensors}"


def check_rebuild(model: nn.Module, rebuilt: nn.Module, name: str) -> None:
    """One-line error naming the first module of ``model`` that ``rebuilt`` does not reproduce."""
    mine = dict(model.named_modules())
    theirs = dict(rebuilt.named_modules())
    for path in dict.fromkeys([*mine, *theirs]):
        a = describe(mine[path]) if path in mine else "missing"
        b = describe(theirs[path]) if path in theirs else "missing"
        if a != b:
            raise VitCompressError(
                f"cannot rebuild this model from {name!r} and the options read off its modules: "
                f"{path or 'the model'} is {a[:120]}, rebuilt it is {b[:120]}; "
                "create it with vitcompress.create_source_model(name, **options)"
            )


def template(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The model ``name`` (with ``kwargs``) on the meta device, for reading its structure."""
    with torch.device("meta"):
        return timm.create_model(name, **decode(kwargs or {}))
