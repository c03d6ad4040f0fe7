"""Hugging Face ``transformers`` ViTs in and out (the optional extra ``hf``).

**In.** ``ViTModel``/``ViTForImageClassification``, ``DeiTModel``/``DeiTForImageClassification``/
``DeiTForImageClassificationWithTeacher``, ``Dinov2Model`` and ``Dinov2WithRegistersModel`` are the
same computation as a timm ``VisionTransformer`` (``VisionTransformerDistilled`` for the DeiT with a
teacher head). ``to_timm`` converts such a module (in memory, or ``load_folder`` of a
``save_pretrained`` folder, recognised by its ``config.json`` ``model_type``) into that timm model,
created through ``create_source_model`` so that its source (timm name and options) is recorded;
from there the ViT family prunes it like any timm ViT: every granularity, every scorer and method,
the token reducers, counting, artifacts, ONNX, ``eval``/``finetune``/``bench``. The tensors are
copied (q/k/v rows concatenated into timm's fused ``qkv``); what the converted model computes is
what the transformers model computes:

- classifiers output the logits (the DeiT with a teacher: the mean of its two heads, as in
  transformers' inference); the ``*Model`` classes output ``last_hidden_state[:, 0]`` (the
  normalised class token, which is DINOv2's ``pooler_output``). The ViT/DeiT ``pooler`` (a dense
  layer and tanh on that token, unused by the classifiers) and the ``mask_token`` are not converted;
- DeiT's distillation token is a register token of timm (``reg_tokens=1``, with its own position
  embedding); DINOv2's register tokens take no position embedding, so the class token's position
  embedding is added to the class token itself (timm's ``no_embed_class`` layout).

Refused in one line: ``Dinov2ForImageClassification`` (its head reads the class token and the mean
of the patch tokens, a pooling timm's ViT has not), SwiGLU DINOv2 (``use_swiglu_ffn``), an activation
other than GELU, and any other class.

**Out.** ``to_hf_folder`` writes an artifact (or any timm ViT of one of these layouts) as a
``save_pretrained`` folder that ``transformers.AutoModel*.from_pretrained`` loads without remote
code, when the transformers config can express it: the same number of heads, MLP width and q/k/v
head dims in every block (``num_attention_heads``, ``intermediate_size``, or for DINOv2 an
integer ``mlp_ratio``: a whole multiple of the embedding width; ``head_dim``), q/k dims unpruned (the config sets the softmax scale from ``head_dim``) and equal to
the v dims; any embedding width and depth. Otherwise one line names the config field that is
missing, and the artifact and its ONNX export remain the output.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from .errors import VitCompressError
from .io import atomic_dir

EXTRA = "pip install 'vitcompress[hf]'"
#: transformers model_type -> timm name whose defaults the converted model starts from
TEMPLATES = {
    "vit": "vit_base_patch16_224",
    "deit": "deit_base_patch16_224",
    "deit_teacher": "deit_base_distilled_patch16_224",
    "dinov2": "vit_base_patch14_dinov2",
    "dinov2_with_registers": "vit_base_patch14_reg4_dinov2",
}
#: the classes ``to_timm`` converts
CLASSES = (
    "ViTModel",
    "ViTForImageClassification",
    "DeiTModel",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
)
REFUSED = {
    "Dinov2ForImageClassification": "its head reads the class token and the mean of the patch tokens, a pooling "
    "timm's ViT has not; prune the Dinov2Model backbone and train a head on its output",
    "Dinov2WithRegistersForImageClassification": "its head reads the class token and the mean of the patch tokens, "
    "a pooling timm's ViT has not; prune the Dinov2WithRegistersModel backbone",
}


def transformers_module():
    """``transformers``, or a one-line error naming the extra that installs it."""
    try:
        import transformers  # optional dependency (the ``hf`` extra)
    except ImportError:
        raise VitCompressError(f"Hugging Face models need the transformers package; install it with {EXTRA}") from None
    return transformers


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a transformers module (its class comes from ``transformers``)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


def hf_folder_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``config.json`` of a ``save_pretrained`` folder (None: not such a folder)."""
    p = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(p):
        return None
    try:
        with open(p) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "model_type" in config else None


def load_folder(path: str | os.PathLike) -> nn.Module:
    """The timm model of the transformers ``save_pretrained`` folder ``path`` (see ``to_timm``)."""
    config = hf_folder_config(path)
    if config is None:
        raise VitCompressError(
            f"{os.fspath(path)!r} has no config.json with a model_type; pass a save_pretrained folder", params=["path"]
        )
    archs = config.get("architectures") or []
    name = archs[0] if archs else ""
    if name in REFUSED:
        raise VitCompressError(f"{name} cannot be converted: {REFUSED[name]}", params=["model"])
    if name not in CLASSES:
        raise VitCompressError(
            f"{os.fspath(path)!r} holds {name or 'a model_type ' + repr(config['model_type'])}; "
            f"vitcompress converts {', '.join(CLASSES)}",
            params=["path"],
        )
    tf = transformers_module()
    model = getattr(tf, name).from_pretrained(os.fspath(path))
    return to_timm(model)


def _check_config(c: Any, cls: str) -> None:
    if getattr(c, "hidden_act", "gelu") != "gelu":
        raise VitCompressError(
            f"{cls} with hidden_act={c.hidden_act!r} is not supported (GELU is); convert a GELU model", params=["model"]
        )
    if getattr(c, "use_swiglu_ffn", False):
        raise VitCompressError(
            f"{cls} with use_swiglu_ffn=True is not supported; convert a DINOv2 with the GELU MLP", params=["model"]
        )


def to_timm(model: nn.Module) -> nn.Module:
    """The timm ViT computing what the transformers ``model`` computes (eval mode), its source recorded."""
    from .models import create_source_model

    cls = type(model).__name__
    if cls in REFUSED:
        raise VitCompressError(f"{cls} cannot be converted: {REFUSED[cls]}", params=["model"])
    if cls not in CLASSES:
        raise VitCompressError(
            f"{cls} is not a supported transformers model; vitcompress converts {', '.join(CLASSES)}", params=["model"]
        )
    c = model.config
    _check_config(c, cls)
    kind = c.model_type + ("_teacher" if cls.endswith("WithTeacher") else "")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    prefix = next((p for p in ("vit.", "deit.", "dinov2.") if any(k.startswith(p) for k in sd)), "")
    sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
    layers = "encoder.layer" if c.model_type.startswith("dinov2") else "layers"
    depth = c.num_hidden_layers
    d = c.hidden_size
    heads = c.num_attention_heads
    hidden = sd[f"{layers}.0.mlp.fc1.weight"].shape[0]
    classes = int(sd["classifier.weight"].shape[0]) if "classifier.weight" in sd else 0
    if kind == "deit_teacher":
        classes = int(sd["cls_classifier.weight"].shape[0])
    size = c.image_size if isinstance(c.image_size, (list, tuple)) else [c.image_size] * 2
    patch = c.patch_size if isinstance(c.patch_size, (list, tuple)) else [c.patch_size] * 2
    qkv_w = sd[f"{layers}.0.attention.q_proj.weight"]
    head_dim = qkv_w.shape[0] // heads
    options: dict[str, Any] = {
        "img_size": list(size),
        "patch_size": list(patch),
        "in_chans": int(c.num_channels),
        "num_classes": classes,
        "embed_dim": d,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": hidden / d if int(d * (hidden / d)) == hidden else (hidden + 0.5) / d,
        "qkv_bias": f"{layers}.0.attention.q_proj.bias" in sd,
        "norm_layer": "layernorm",
        "norm_eps": float(c.layer_norm_eps),
    }
    if kind == "deit":
        options["reg_tokens"] = 1  # the distillation token: a prefix token with its own position embedding
    if kind == "dinov2":
        options["init_values"] = 1.0
    if kind == "dinov2_with_registers":
        options.update(init_values=1.0, reg_tokens=int(c.num_register_tokens))
    if head_dim * heads != d:
        raise VitCompressError(
            f"{cls} has {heads} heads of {head_dim} dims on a {d}-wide stream (a head-pruned folder), which timm's "
            "ViT cannot build; prune again from the vitcompress artifact the folder was written from",
            params=["model"],
        )
    net = create_source_model(TEMPLATES[kind], **options)
    new: dict[str, torch.Tensor] = {}
    new["cls_token"] = sd["embeddings.cls_token"]
    pos = sd["embeddings.position_embeddings"]
    if kind == "dinov2_with_registers":
        new["cls_token"] = sd["embeddings.cls_token"] + pos[:, :1]
        new["reg_token"] = sd["embeddings.register_tokens"]
        pos = pos[:, 1:]
    elif kind == "deit":
        new["reg_token"] = sd["embeddings.distillation_token"]
    elif kind == "deit_teacher":
        new["dist_token"] = sd["embeddings.distillation_token"]
    new["pos_embed"] = pos
    new["patch_embed.proj.weight"] = sd["embeddings.patch_embeddings.projection.weight"]
    new["patch_embed.proj.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
    n1, n2 = ("norm1", "norm2") if c.model_type.startswith("dinov2") else ("layernorm_before", "layernorm_after")
    for i in range(depth):
        s, t = f"{layers}.{i}.", f"blocks.{i}."
        a = s + "attention."
        new[t + "attn.qkv.weight"] = torch.cat([sd[a + f"{p}_proj.weight"] for p in "qkv"])
        if options["qkv_bias"]:
            new[t + "attn.qkv.bias"] = torch.cat([sd[a + f"{p}_proj.bias"] for p in "qkv"])
        new[t + "attn.proj.weight"], new[t + "attn.proj.bias"] = sd[a + "o_proj.weight"], sd[a + "o_proj.bias"]
        for mine, theirs in (("norm1", n1), ("norm2", n2), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            new[t + mine + ".weight"], new[t + mine + ".bias"] = sd[s + theirs + ".weight"], sd[s + theirs + ".bias"]
        if c.model_type.startswith("dinov2"):
            new[t + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
            new[t + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
    new["norm.weight"], new["norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    if kind == "deit_teacher":
        new["head.weight"], new["head.bias"] = sd["cls_classifier.weight"], sd["cls_classifier.bias"]
        new["head_dist.weight"] = sd["distillation_classifier.weight"]
        new["head_dist.bias"] = sd["distillation_classifier.bias"]
    elif classes:
        new["head.weight"], new["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
    missing, unexpected = net.load_state_dict({k: v.clone() for k, v in new.items()}, strict=False)
    if missing or unexpected:
        raise VitCompressError(
            f"cannot convert {cls}: timm model lacks {unexpected[:3]} / has no value for {missing[:3]}",
            params=["model"],
        )
    return net.eval()


# --------------------------------------------------------------------------------------- out
def _layout(model: nn.Module) -> tuple[str, str]:
    """(transformers model_type, class name) of a timm ViT, or a one-line error."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise VitCompressError(
            f"{type(model).__name__} has no transformers counterpart; a transformers folder is written from timm ViTs only",
            params=["model"],
        )
    blk = model.blocks[0]
    has_ls = hasattr(getattr(blk, "ls1", None), "gamma")
    problems = []
    if model.cls_token is None or model.global_pool != "token" or not isinstance(model.fc_norm, nn.Identity):
        problems.append("a class-token classifier (global_pool='token')")
    if not isinstance(model.norm_pre, nn.Identity) or isinstance(model.norm, nn.Identity):
        problems.append("no pre-norm and a final norm")
    if problems:
        raise VitCompressError(
            f"transformers' ViTs need {' and '.join(problems)}; this model has not: keep the artifact and ONNX",
            params=["model"],
        )
    if isinstance(model, VisionTransformerDistilled):
        return "deit", "DeiTForImageClassificationWithTeacher"
    classifier = model.num_classes > 0
    if has_ls:
        if model.num_reg_tokens and model.no_embed_class:
            if classifier:
                raise VitCompressError(
                    "Dinov2WithRegistersForImageClassification's head is not the class token's; write a num_classes=0 model",
                    params=["model"],
                )
            return "dinov2_with_registers", "Dinov2WithRegistersModel"
        if not model.num_reg_tokens and not model.no_embed_class:
            if classifier:
                raise VitCompressError(
                    "Dinov2ForImageClassification's head is not the class token's; write a num_classes=0 model",
                    params=["model"],
                )
            return "dinov2", "Dinov2Model"
    elif not model.no_embed_class and model.num_reg_tokens in (0, 1):
        vit = model.num_reg_tokens == 0
        return ("vit" if vit else "deit"), ("ViT" if vit else "DeiT") + (
            "ForImageClassification" if classifier else "Model"
        )
    raise VitCompressError(
        "this ViT's token layout has no transformers counterpart; keep the artifact and ONNX", params=["model"]
    )


def hf_config_problem(spec: Any) -> str | None:
    """Why a transformers config cannot express a model of ``spec`` (None: it can)."""
    b0 = spec.blocks[0]
    if any(b.num_heads != b0.num_heads for b in spec.blocks):
        return "per-layer head counts (the config has one num_attention_heads)"
    if any(b.mlp_hidden != b0.mlp_hidden for b in spec.blocks):
        return "per-layer MLP widths (the config has one intermediate_size / mlp_ratio)"
    if any(b.qk_dim != b0.qk_dim or b.v_dim != b0.v_dim for b in spec.blocks):
        return "per-layer head dims (the config has one head_dim)"
    if b0.qk_dim != b0.v_dim:
        return "q/k head dims different from the v head dims (the config has one head_dim for q, k and v)"
    if abs(b0.scale - b0.qk_dim**-0.5) > 1e-6 * b0.scale:
        return (
            "pruned q/k dims (the config sets the softmax scale from head_dim; it has no field for the unpruned scale)"
        )
    return None


def to_hf_folder(model: nn.Module, output: str | os.PathLike, *, force: bool = False) -> str:
    """Write the timm ViT ``model`` (an artifact's) as a transformers ``save_pretrained`` folder;
    returns the transformers class name. One-line error when the config cannot express the model."""
    from .families import family_of

    tf = transformers_module()
    model_type, cls = _layout(model)
    spec = family_of(model).spec(model)
    problem = hf_config_problem(spec)
    if problem:
        raise VitCompressError(
            f"the transformers config has no field for {problem}; keep the artifact and its ONNX export "
            "(a transformers folder needs the same heads, head dims and MLP width in every block)",
            params=["model"],
        )
    b0 = spec.blocks[0]
    d, depth, heads, hd, hidden = spec.embed_dim, spec.depth, b0.num_heads, b0.qk_dim, b0.mlp_hidden
    pe = model.patch_embed
    norm = model.norm
    common: dict[str, Any] = dict(
        hidden_size=d,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        head_dim=hd,
        image_size=int(pe.img_size[0]),
        patch_size=int(pe.patch_size[0]),
        num_channels=int(pe.proj.in_channels),
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        layer_norm_eps=float(norm.eps),
        hidden_act="gelu",
    )
    if pe.img_size[0] != pe.img_size[1] or pe.patch_size[0] != pe.patch_size[1]:
        raise VitCompressError(
            "the transformers config has no field for non-square images or patches; keep the artifact", params=["model"]
        )
    if model_type.startswith("dinov2"):
        if hidden % d:
            raise VitCompressError(
                f"the {model_type} config has no field for an MLP width ({hidden}) that is not a whole multiple of "
                f"hidden_size ({d}): its mlp_ratio is an integer; keep the artifact and its ONNX export",
                params=["model"],
            )
        common["mlp_ratio"] = hidden // d
        if model_type == "dinov2_with_registers":
            common["num_register_tokens"] = int(model.num_reg_tokens)
    else:
        common["intermediate_size"] = hidden
    if model.num_classes:
        common["num_labels"] = int(model.num_classes)
    config = tf.AutoConfig.for_model(model_type, **common)
    config.architectures = [cls]
    with torch.device("meta"):
        hf = getattr(tf, cls)(config)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    prefix = {"vit": "vit.", "deit": "deit.", "dinov2": "", "dinov2_with_registers": ""}[model_type]
    if cls.endswith("Model"):
        prefix = ""
    layers = prefix + ("encoder.layer" if model_type.startswith("dinov2") else "layers")
    e = prefix + "embeddings."
    out: dict[str, torch.Tensor] = {}
    out[e + "cls_token"] = sd["cls_token"]
    pos = sd["pos_embed"]
    if model_type == "dinov2_with_registers":
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], 1)
        out[e + "register_tokens"] = sd["reg_token"]
    elif cls.startswith("DeiTForImageClassificationWithTeacher"):
        out[e + "distillation_token"] = sd["dist_token"]
    elif model_type == "deit":
        out[e + "distillation_token"] = sd["reg_token"]
    out[e + "position_embeddings"] = pos
    out[e + "patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
    out[e + "patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    n1, n2 = ("norm1", "norm2") if model_type.startswith("dinov2") else ("layernorm_before", "layernorm_after")
    w = heads * hd
    for i in range(depth):
        s, t = f"{layers}.{i}.", f"blocks.{i}."
        q, k, v = sd[t + "attn.qkv.weight"].split([w, w, w])
        out[s + "attention.q_proj.weight"], out[s + "attention.k_proj.weight"] = q, k
        out[s + "attention.v_proj.weight"] = v
        if t + "attn.qkv.bias" in sd:
            qb, kb, vb = sd[t + "attn.qkv.bias"].split([w, w, w])
            out[s + "attention.q_proj.bias"], out[s + "attention.k_proj.bias"] = qb, kb
            out[s + "attention.v_proj.bias"] = vb
        out[s + "attention.o_proj.weight"], out[s + "attention.o_proj.bias"] = (
            sd[t + "attn.proj.weight"],
            sd[t + "attn.proj.bias"],
        )
        for mine, theirs in (("norm1", n1), ("norm2", n2), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            out[s + theirs + ".weight"], out[s + theirs + ".bias"] = sd[t + mine + ".weight"], sd[t + mine + ".bias"]
        if model_type.startswith("dinov2"):
            out[s + "layer_scale1.lambda1"] = sd[t + "ls1.gamma"]
            out[s + "layer_scale2.lambda1"] = sd[t + "ls2.gamma"]
    out[prefix + "layernorm.weight"], out[prefix + "layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    if cls.endswith("WithTeacher"):
        out["cls_classifier.weight"], out["cls_classifier.bias"] = sd["head.weight"], sd["head.bias"]
        out["distillation_classifier.weight"] = sd["head_dist.weight"]
        out["distillation_classifier.bias"] = sd["head_dist.bias"]
    elif model.num_classes:
        out["classifier.weight"], out["classifier.bias"] = sd["head.weight"], sd["head.bias"]
    # what the transformers model has and the timm model has not: the ViT/DeiT pooler, DINOv2's
    # mask token (neither is used by the output we compare); written as transformers initialises them
    for name, p in hf.state_dict().items():
        if name not in out:
            if "pooler" in name or "mask_token" in name:
                out[name] = (
                    torch.zeros(p.shape, dtype=p.dtype) if "bias" in name or "mask" in name else torch.eye(*p.shape)
                )
            else:
                raise VitCompressError(f"cannot write {cls}: no value for {name}", params=["model"])
    hf.load_state_dict({k: v.contiguous().clone() for k, v in out.items()}, assign=True, strict=True)
    with atomic_dir(output, force=force) as tmp:
        hf.save_pretrained(tmp)
    return cls
