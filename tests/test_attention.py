"""The attention core (``vitcompress.attention``): each term it takes (scale, additive bias, shifted-
window mask, causal and boolean/additive masks, rotary embeddings) against a float64 reference
written element by element from the definitions; the fused (SDPA) and explicit paths agree; the
core compiles with TorchScript; and no other module of the library calls SDPA itself."""

import math
from pathlib import Path

import pytest
import torch

import vitcompress
from vitcompress.attention import attention, attention_probs, merge_heads, split_heads, split_qkv

B, H, N, QK, V = 4, 3, 6, 5, 7
NUM_WIN = 2  # windows per image: B = 2 images x 2 windows


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rope_table(n, d, half, seed):
    """``[sin | cos]`` of one random angle per token and q/k pair, in timm's interleaved layout
    (pairs (0, 1), (2, 3), ...) or its half-split layout (pairs (i, i + d/2)); and the angles."""
    theta = rand(n, d // 2, seed=seed)
    if half:
        sin, cos = torch.cat([theta.sin()] * 2, -1), torch.cat([theta.cos()] * 2, -1)
    else:
        sin, cos = theta.sin().repeat_interleave(2, -1), theta.cos().repeat_interleave(2, -1)
    return torch.cat([sin, cos], -1), theta


def rotate_ref(x, theta, prefix, half):
    """Each pair of dims of the tokens after ``prefix`` rotated by its angle (a complex product)."""
    x = x.clone().double()
    d = x.shape[-1]
    for t in range(prefix, x.shape[-2]):
        for i in range(d // 2):
            a, b = (i, i + d // 2) if half else (2 * i, 2 * i + 1)
            c, s = math.cos(theta[t - prefix, i]), math.sin(theta[t - prefix, i])
            xa, xb = x[..., t, a].clone(), x[..., t, b].clone()
            x[..., t, a], x[..., t, b] = xa * c - xb * s, xb * c + xa * s
    return x


def reference(q, k, v, scale, bias=None, window_mask=None, attn_mask=None, is_causal=False):
    """softmax over keys of sum_d q k * scale + the terms, then @ v: float64, one entry at a time."""
    q, k, v = q.double(), k.double(), v.double()
    b_, h_, nq, _ = q.shape
    nk = k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(b_, h_, nq, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            for i in range(nq):
                logits = []
                for j in range(nk):
                    z = float((q[b, h, i] * k[b, h, j]).sum()) * scale
                    if bias is not None:
                        z += float(bias[b % bias.shape[0], h % bias.shape[1], i % bias.shape[2], j])
                    if window_mask is not None:
                        z += float(window_mask[b % window_mask.shape[0], i, j])
                    if is_causal and j > i:
                        z = -math.inf
                    if attn_mask is not None:
                        m = attn_mask[b % attn_mask.shape[0], h % attn_mask.shape[1], i, j]
                        z = (z if bool(m) else -math.inf) if attn_mask.dtype == torch.bool else z + float(m)
                    logits.append(z)
                top = max(logits)
                w = [math.exp(z - top) for z in logits]
                total = sum(w)
                out[b, h, i] = sum(wj / total * v[b, h, j] for j, wj in enumerate(w))
    return out


def bool_mask():
    m = rand(B, 1, N, N, seed=5) > 0
    m[..., 0] = True  # every query sees a key
    return m


# id: keyword arguments of the core (besides q, k, v); tensors as factories, built per test
CASES = {
    "plain": lambda: dict(scale=0.3),
    "default_scale": lambda: dict(scale=None),
    "relative_position_bias": lambda: dict(scale=0.3, bias=rand(1, H, N, N, seed=3)),
    "size_bias": lambda: dict(scale=0.3, bias=rand(B, 1, 1, N, seed=3).abs().log()),
    "window_mask": lambda: dict(scale=0.3, window_mask=-100.0 * (rand(NUM_WIN, N, N, seed=4) > 0)),
    "bias_and_window_mask": lambda: dict(
        scale=0.3, bias=rand(1, H, N, N, seed=3), window_mask=-100.0 * (rand(NUM_WIN, N, N, seed=4) > 0)
    ),
    "bool_mask": lambda: dict(scale=0.3, attn_mask=bool_mask()),
    "additive_mask": lambda: dict(scale=0.3, attn_mask=rand(B, H, N, N, seed=6)),
    "bias_and_bool_mask": lambda: dict(scale=0.3, bias=rand(1, H, N, N, seed=3), attn_mask=bool_mask()),
    "causal": lambda: dict(scale=0.3, is_causal=True),
}


def qkv():
    return rand(B, H, N, QK, seed=0), rand(B, H, N, QK, seed=1), rand(B, H, N, V, seed=2)


@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "fused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_core_equals_the_definition(case, fused):
    kw = CASES[case]()
    q, k, v = qkv()
    got = attention(q, k, v, fused=fused, **kw)
    torch.testing.assert_close(got.double(), reference(q, k, v, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_probabilities_are_those_the_explicit_path_applies(case):
    kw = CASES[case]()
    q, k, v = qkv()
    p = attention_probs(q, k, **kw)
    torch.testing.assert_close(p.sum(-1), torch.ones(B, H, N))
    torch.testing.assert_close(p @ v, attention(q, k, v, fused=False, **kw), atol=0, rtol=0)


@pytest.mark.parametrize("half", [False, True], ids=["interleaved", "half"])
@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "fused"])
def test_rotary_embedding_rotates_the_tokens_after_the_prefix(fused, half):
    v = qkv()[2]
    prefix = 2
    rope, theta = rope_table(N - prefix, QK + 1, half, seed=7)  # an even q/k width
    q, k = rand(B, H, N, QK + 1, seed=8), rand(B, H, N, QK + 1, seed=9)
    got = attention(q, k, v, scale=0.3, fused=fused, rope=rope, rope_prefix=prefix, rope_half=half)
    qr, kr = rotate_ref(q, theta, prefix, half), rotate_ref(k, theta, prefix, half)
    torch.testing.assert_close(got.double(), reference(qr, kr, v, 0.3), atol=1e-5, rtol=1e-5)
    # the prefix tokens' q/k are not rotated: rotating them too changes what they attend to
    rope_all, _ = rope_table(N, QK + 1, half, seed=7)
    assert not torch.allclose(got, attention(q, k, v, scale=0.3, fused=fused, rope=rope_all, rope_half=half))


def test_head_layout_round_trips_and_splits_a_fused_projection():
    x = rand(2, N, H * V, seed=10)
    heads = split_heads(x, H, V)
    assert heads.shape == (2, H, N, V)
    torch.testing.assert_close(heads[:, 1, :, 2], x[:, :, 1 * V + 2])  # head-major columns
    torch.testing.assert_close(merge_heads(heads), x)
    y = rand(2, N, H * (2 * QK + V), seed=11)
    q, k, v = split_qkv(y, H, QK, V)
    torch.testing.assert_close(q[:, 2, :, 4], y[:, :, 2 * QK + 4])
    torch.testing.assert_close(k[:, 0, :, 1], y[:, :, H * QK + 1])
    torch.testing.assert_close(v[:, 1, :, 6], y[:, :, 2 * H * QK + V + 6])


def test_core_compiles_with_torchscript():
    scripted = torch.jit.script(attention)
    q, k, v = qkv()
    rope, _ = rope_table(N - 1, QK + 1, False, seed=7)
    qe, ke = rand(B, H, N, QK + 1, seed=8), rand(B, H, N, QK + 1, seed=9)
    for fused in (False, True):
        for case in CASES:
            kw = CASES[case]()
            torch.testing.assert_close(scripted(q, k, v, fused=fused, **kw), attention(q, k, v, fused=fused, **kw))
        torch.testing.assert_close(
            scripted(qe, ke, v, 0.3, fused, rope=rope, rope_prefix=1),
            attention(qe, ke, v, 0.3, fused, rope=rope, rope_prefix=1),
        )


def test_no_module_but_the_core_calls_sdpa():
    root = Path(vitcompress.__file__).parent
    callers = [
        p.relative_to(root).as_posix()
        for p in sorted(root.rglob("*.py"))
        if not (root / p.relative_to(root).parts[0]).is_symlink()  # the linked exporters, benchmarks, cli
        and "scaled_dot_product_attention(" in p.read_text()
    ]
    assert callers == ["attention.py"]
