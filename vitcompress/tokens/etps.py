"""``etps``: Top-K by class-token attention; each pruned token is fused into its most similar
kept token with exp(cosine) weights (token pruning and squeezing).

With the keys of all heads side by side as the similarity feature (``tokens.attention``), a pruned
token ``i`` picks the host
``j = argmax_j cos(k_i, k_j)`` among the kept tokens and carries weight ``w_i = exp(cos(k_i, k_j))``;
a host's own weight is ``exp(1)``. Weights are multiplied by token sizes, so a host becomes

    x_j <- (e s_j x_j + sum_{i->j} w_i s_i x_i) / (e s_j + sum_{i->j} w_i s_i),  s_j <- s_j + sum_{i->j} s_i.

The host assignment is a one-hot matrix product (``(n-K) K (C+2)`` MACs) and the similarity a
``(n-K) K H qk`` product (H heads of q/k width qk); both are counted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .arithmetic import keep_count
from .base import Reducer, gather_tokens, one_hot


class ETPS(Reducer):
    name = "etps"
    needs_metric = True
    tracks_size = True

    def out_count(self, n):
        return keep_count(n, self.keep)

    def extra_macs(self, n, heads, qk, dim, has_cls):
        k = keep_count(n, self.keep)
        return super().extra_macs(n, heads, qk, dim, has_cls) + (n - k) * k * (heads * qk + dim + 2)

    def forward(self, x, size, scores, metric):
        px, xp = self.split(x)
        ps, sp = self.split(size)
        mp = F.normalize(metric[:, self.prefix :], dim=-1)
        n = xp.shape[1]
        k = self.kept(n)
        order = scores.topk(n, dim=1).indices
        keep_idx, drop_idx = order.split([k, n - k], dim=1)
        xk, xd = gather_tokens(xp, keep_idx), gather_tokens(xp, drop_idx)
        sk, sd = gather_tokens(sp, keep_idx), gather_tokens(sp, drop_idx)
        sim = gather_tokens(mp, drop_idx) @ gather_tokens(mp, keep_idx).transpose(1, 2)  # [B, n-K, K]
        best, host = sim.max(dim=-1)
        w = best.exp().unsqueeze(-1) * sd
        agg = one_hot(host, k, x.dtype).transpose(1, 2) @ torch.cat([w * xd, w, sd], dim=-1)  # [B, K, C+2]
        c = x.shape[-1]
        self_w = math.e * sk
        xk = (self_w * xk + agg[..., :c]) / (self_w + agg[..., c : c + 1])
        sk = sk + agg[..., c + 1 :]
        return torch.cat([px, xk], dim=1), torch.cat([ps, sk], dim=1)
