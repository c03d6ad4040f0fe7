"""``topk`` and ``topk-vpa``: keep the patch tokens with the highest class-token attention.

``topk`` keeps ``K = ceil(keep * n)`` of the ``n`` patch tokens, ranked by the class token's
attention (softmax over keys, averaged over heads); the pruned tokens are dropped.

``topk-vpa`` (Variable Proportional Attention) gives every token a size, starting at 1. When a
block prunes, the total size ``M`` of the pruned tokens is handed to the kept tokens in proportion
to their class-token attention: ``s_j <- s_j + M * a_j / sum_{kept} a``. Every later attention adds
``log(s_j)`` to the logits of key ``j`` (proportional attention), so a kept token speaks for the
patches it absorbed and the class token's attention mass is not renormalised onto tokens that
were never attended. Sizes always sum to the original patch count. ``vpa=False`` is the
ablation: plain Top-K (no sizes, no bias).
"""

from __future__ import annotations

import torch

from .arithmetic import keep_count
from .base import EPS, Reducer, gather_tokens


class TopK(Reducer):
    name = "topk"

    def out_count(self, n):
        return keep_count(n, self.keep)

    def select(self, scores: torch.Tensor, n):
        return scores.topk(self.kept(n), dim=1)  # sorted (TensorRT: sorted=1)

    def forward(self, x, size, scores, metric=None):
        px, xp = self.split(x)
        vals, idx = self.select(scores, xp.shape[1])
        x = torch.cat([px, gather_tokens(xp, idx)], dim=1)
        if size is not None:
            ps, sp = self.split(size)
            size = torch.cat([ps, gather_tokens(sp, idx)], dim=1)
        return x, size


class TopKVPA(TopK):
    name = "topk-vpa"

    @property
    def tracks_size(self) -> bool:  # type: ignore[override]
        return bool(self.options.get("vpa", True))

    @property
    def default_prop_attn(self) -> bool:  # type: ignore[override]
        return self.tracks_size

    def forward(self, x, size, scores, metric=None):
        if size is None:  # vpa=False: plain Top-K
            return super().forward(x, size, scores, metric)
        px, xp = self.split(x)
        ps, sp = self.split(size)
        vals, idx = self.select(scores, xp.shape[1])
        kept = gather_tokens(sp, idx)  # [B, K, 1]
        pruned = sp.sum(dim=1, keepdim=True) - kept.sum(dim=1, keepdim=True)  # [B, 1, 1]
        a = vals.unsqueeze(-1)
        kept = kept + pruned * a / a.sum(dim=1, keepdim=True).clamp_min(EPS)
        return torch.cat([px, gather_tokens(xp, idx)], dim=1), torch.cat([ps, kept], dim=1)
