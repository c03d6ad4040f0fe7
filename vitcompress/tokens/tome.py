"""``tome``: bipartite soft matching on keys, size-weighted merging, proportional attention.

The patch tokens are split alternately into sets A (even positions) and B (odd positions); every
token of A is matched to its most similar token of B (cosine of the keys of all heads side by side,
``tokens.attention``), and
the ``r = min(merge, n // 2)`` best-matched A tokens are merged into their B partners by a
size-weighted average (sizes add). Unmerged A tokens come first, then B. Later blocks add
``log(size)`` to the attention logits. The merge is a one-hot product (``r |B| (C+1)`` MACs) and
the matching an ``|A| |B| H qk`` product (H heads of q/k width qk); both are counted. Prefix tokens are never matched.
With one patch token nothing is matched (``r = 0``); the tokens pass unchanged.

Export: set A is gathered with an index (``|A| = n - n // 2``), so the output count simplifies to
``n - min(r, n // 2)``, and that count is restated as a fresh symbol (``base.fresh_count``) so
that the symbolic token count of later blocks does not double in length with every merging block.
A runtime keep rate does not apply to ToMe (it merges a count, not a fraction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .arithmetic import merge_count
from .base import Reducer, ceil_div, fresh_count, gather_tokens, one_hot


class ToMe(Reducer):
    name = "tome"
    kinds = ("merge",)
    needs_scores = False
    needs_metric = True
    tracks_size = True
    default_prop_attn = True

    def out_count(self, n):
        return n - merge_count(n, self.merge)

    def extra_macs(self, n, heads, qk, dim, has_cls):
        na, nb = ceil_div(n, 2), n // 2
        return na * nb * heads * qk + merge_count(n, self.merge) * nb * (dim + 1)

    def forward(self, x, size, scores, metric):
        px, xp = self.split(x)
        ps, sp = self.split(size)
        n = xp.shape[1]
        if isinstance(n, int) and n < 2:  # nothing left to match (eager only; exported counts stay symbolic)
            return x, size
        r = merge_count(n, self.merge)
        na = n - n // 2  # |A| = ceil(n / 2)
        even = torch.arange(na, device=x.device) * 2  # A: even positions
        m = F.normalize(metric[:, self.prefix :], dim=-1)
        sim = m.index_select(1, even) @ m[:, 1::2].transpose(1, 2)  # [B, |A|, |B|] cosines
        # one column of -2 (below any cosine) keeps the max defined when |B| = 0 (n = 1, r = 0)
        sim = torch.cat([sim, sim.new_full((sim.shape[0], na, 1), -2.0)], dim=-1)
        node_max, node_idx = sim.max(dim=-1)
        edge = node_max.topk(na, dim=1).indices  # A tokens, best matched first
        src_idx, unm_idx = edge.split([r, na - r], dim=1)
        dst_idx = node_idx.gather(1, src_idx)  # [B, r]
        xa, sa = xp.index_select(1, even), sp.index_select(1, even)
        a = torch.cat([xa * sa, sa], dim=-1)  # size-weighted, + size channel
        b = torch.cat([xp[:, 1::2] * sp[:, 1::2], sp[:, 1::2]], dim=-1)
        b = b + one_hot(dst_idx, n // 2, x.dtype).transpose(1, 2) @ gather_tokens(a, src_idx)
        merged = torch.cat([gather_tokens(a, unm_idx), b], dim=1)
        c = x.shape[-1]
        s = merged[..., c:]
        out = torch.cat([px, merged[..., :c] / s], dim=1), torch.cat([ps, s], dim=1)
        return fresh_count(*out, self.prefix, n - r)
