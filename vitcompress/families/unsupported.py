"""Why the ViT-like timm model modules that no family owns are refused (used in the one-line refusal
of such a model name or module)."""

from __future__ import annotations

MODULE_REASONS = {
    "naflexvit": "variable-resolution patch packing with per-image masks",
    "beit": "a relative position bias table per head",
    "vision_transformer_relpos": "a relative position bias per head",
    "vision_transformer_sam": "windowed attention with relative positions",
    "cait": "class attention and talking heads",
    "xcit": "cross-covariance attention over channels",
    "levit": "convolutional stages with attention subsampling",
    "pit": "pooling stages that change the width",
    "tnt": "inner and outer transformers",
    "twins": "locally grouped and global sub-sampled attention",
    "crossvit": "two branches of different widths with cross attention",
    "mvitv2": "pooling attention stages",
    "vitamin": "a convolutional stem stage and its own blocks",
    "convit": "gated positional self-attention",
    "deepseek_vit": "its own blocks",
    "qwen3_vit": "its own blocks",
    "gemma4_vit": "its own blocks",
}


def module_reason(module: str) -> str:
    """Why a model of timm module ``module`` (e.g. ``timm.models.eva``) is refused ('' if unknown)."""
    return MODULE_REASONS.get(module.rsplit(".", 1)[-1], "")
