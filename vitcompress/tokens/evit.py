"""``evit``: Top-K by class-token attention, the inattentive tokens fused into one extra token.

Of ``n`` patch tokens the ``K = min(ceil(keep * n), n - 1)`` most attended are kept; the other
``n - K`` (at least one) are replaced by one token, their average weighted by class-token attention
``x_f = sum_i a_i x_i / sum_i a_i`` (EViT), placed after the kept tokens, so the token count never
grows. The fused token counts as a patch token in later stages; its size is the sum of the sizes
it absorbed. At keep 1.0 nothing is pruned and no fused token is added.
"""

from __future__ import annotations

import torch

from .arithmetic import keep_count, sym_min
from .base import EPS, Reducer, gather_tokens


class EViT(Reducer):
    name = "evit"
    tracks_size = True

    max_keep_permille = 999  # a runtime-keep graph always fuses: its keep rate is at most 0.999

    @property
    def fuse(self) -> bool:
        return getattr(self, "runtime_keep", None) is not None or self.keep is None or self.keep < 1.0

    def out_count(self, n):
        return sym_min(keep_count(n, self.keep), n - 1) + 1 if self.fuse else keep_count(n, self.keep)

    def forward(self, x, size, scores, metric=None):
        px, xp = self.split(x)
        ps, sp = self.split(size)
        n = xp.shape[1]
        k = self.kept(n, leave_one=self.fuse)
        if not self.fuse:
            idx = scores.topk(k, dim=1).indices
            return torch.cat([px, gather_tokens(xp, idx)], 1), torch.cat([ps, gather_tokens(sp, idx)], 1)
        vals, order = scores.topk(n, dim=1)  # full ranking: kept first, then the inattentive
        keep_idx, drop_idx = order.split([k, n - k], dim=1)
        a = vals.split([k, n - k], dim=1)[1].unsqueeze(-1)  # [B, n-K, 1]
        fused = (a * gather_tokens(xp, drop_idx)).sum(1, keepdim=True) / a.sum(1, keepdim=True).clamp_min(EPS)
        fsize = gather_tokens(sp, drop_idx).sum(1, keepdim=True)
        x = torch.cat([px, gather_tokens(xp, keep_idx), fused], dim=1)
        size = torch.cat([ps, gather_tokens(sp, keep_idx), fsize], dim=1)
        return x, size
