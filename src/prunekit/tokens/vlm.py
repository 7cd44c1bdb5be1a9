"""Visual-token methods on the one hook (LLaVA-style models): VFlowOpt and LRS-VQA coarse-to-fine.

VFlowOpt (Yang et al., 2025, arXiv:2508.05211), simplified to one stage at decoder layer ``K``::

    s_j   = A^(K-1)[last, j]                       importance: attention from the last (question) token
    keep  = top_{k-m}(s)  ∪  C,   C = the next m by s     m = ⌈ρ·k⌉ recycling slots, k = ⌈R·N⌉
    v_c   ← mean({v_c} ∪ {v_p : p pruned, c = argmax_{c'∈C} cos(v_p, v_c')})     recycling into aggregates

Simplified from the paper: one pruning stage inside the LLM (the paper prunes progressively in the
vision encoder and the LLM), importance is the last token's attention (the paper adds a patch-entropy
term), and the keep ratios are given, not found by Bayesian optimisation.

LRS-VQA coarse-to-fine text-guided pruning (Luo et al., 2025, arXiv:2503.07588), simplified to one
image on a √N×√N token grid, at layer ``K`` (default 0, before the LLM)::

    t_j     = max_t cos(v_j, e_t)                  text relevance of image token j (t: the prompt's text tokens)
    S_r     = mean_{j∈r} t_j                       coarse: regions r of r×r tokens
    R*      = best regions by S_r until they hold ≥ min(N, 2k) tokens
    keep    = top_k(t_j + 10·[j ∈ R*])             fine: the best tokens inside the chosen regions

Simplified from the paper: no image pyramid / tile fetching (the grid is the LLaVA feature map), and
relevance is embedding similarity to the question instead of the LLM's text-to-image attention.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from . import scorers as S
from .hook import TokenPatch, take, topk_keep
from .methods import FastV, Shorten, TokenPruneConfig


class VFlowOpt(FastV):
    name = "vflowopt"
    needs_image = True

    def __init__(self, model: nn.Module, cfg: TokenPruneConfig, n_layers: int) -> None:
        if cfg.recovery is not None:
            raise ConfigError(f"recovery={cfg.recovery!r}: vflowopt always recycles pruned tokens into aggregates "
                              f"(set recycle=0 to drop them)")  # fmt: skip
        if cfg.query == "all":
            cfg = TokenPruneConfig(**{**cfg.__dict__, "query": "last"})
        super().__init__(model, cfg, n_layers)
        r = cfg.recycle
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= float(r) <= 1:
            raise ConfigError(f"recycle={r!r} is outside [0, 1]: the fraction of the kept budget used as recycled "
                              f"aggregates, e.g. recycle=0.25")  # fmt: skip
        self.rho = float(r)
        self.recovery = "recycle"

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        c = patch.state["candidates"] = self.candidates(patch, h)
        if self.all_kept(c):
            return None
        x, pe, mask = patch.state.pop("attn_in")
        s = S.attention_received(S.attention_probs(patch.layers[i - 1].self_attn, x, pe, mask, self.config), self.query)
        patch.state["vflowopt:score"] = s
        return topk_keep(s, c, self.keep)

    def recover(self, patch: TokenPatch, h: Tensor, keep: Tensor, drop: Tensor) -> Tensor:
        kept = take(h, keep)
        c, s = patch.state["candidates"], patch.state.pop("vflowopt:score")
        kc = take(c, keep)  # [B, k_all] which kept rows are candidates
        k = int(kc[0].sum())
        m = min(k, math.ceil(self.rho * k)) if drop.shape[1] else 0
        patch.state["vflowopt"] = {"kept": k, "aggregates": m, "recycled": int(drop.shape[1])}
        if m == 0:
            return kept
        ks = take(s, keep).float().masked_fill(~kc, math.inf)
        slots = ks.topk(m, dim=1, largest=False).indices  # [B, m] the m lowest-scored kept candidates
        dropped, carriers = take(h, drop).float(), take(kept, slots).float()
        j = (F.normalize(dropped, dim=-1) @ F.normalize(carriers, dim=-1).transpose(1, 2)).argmax(-1)  # [B, r]
        sums = carriers.clone().scatter_add_(1, j[..., None].expand(-1, -1, h.shape[-1]), dropped)
        cnt = torch.ones(carriers.shape[:2], device=h.device).scatter_add_(1, j, torch.ones(j.shape, device=h.device))
        out = kept.clone()
        out.scatter_(1, slots[..., None].expand(-1, -1, h.shape[-1]), (sums / cnt[..., None]).to(h.dtype))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "recycle": self.rho, "query": self.query}


class CoarseToFine(Shorten):
    name = "coarse-to-fine"
    default_layer = 0
    needs_image = True

    def __init__(self, model: nn.Module, cfg: TokenPruneConfig, n_layers: int) -> None:
        super().__init__(model, cfg, n_layers)
        r = cfg.region
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ConfigError(f"region={r!r} is not a positive integer: the side of a coarse region in tokens, e.g. region=4")
        self.region = r

    def region_ids(self, n_c: int) -> Tensor:
        g = math.isqrt(n_c)
        if g * g != n_c:
            raise DataError(f"coarse-to-fine: the image span has {n_c} tokens, not a square grid: the method needs one "
                            f"image as a √N×√N feature map (e.g. 576 = 24×24)")  # fmt: skip
        y, x = torch.div(torch.arange(n_c), g, rounding_mode="floor"), torch.arange(n_c) % g
        per = math.ceil(g / self.region)
        return (y // self.region) * per + x // self.region

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        c = patch.state["candidates"] = self.candidates(patch, h)
        if self.all_kept(c):
            return None
        n_c = int(c[0].sum())
        rid = self.region_ids(n_c).to(h.device)
        k = max(1, round(self.keep * n_c))
        t = S.text_similarity(h, c)  # [B, n]
        score = torch.zeros_like(t)
        chosen_all = []
        for b in range(h.shape[0]):
            tb = t[b][c[b]]
            n_r = int(rid.max()) + 1
            size = torch.zeros(n_r, device=h.device).scatter_add_(0, rid, torch.ones_like(tb))
            S_r = torch.zeros(n_r, device=h.device).scatter_add_(0, rid, tb) / size
            order = S_r.argsort(descending=True)
            need = min(n_c, 2 * k)
            upto = int((size[order].cumsum(0) < need).sum()) + 1
            chosen = torch.zeros(n_r, dtype=torch.bool, device=h.device)
            chosen[order[:upto]] = True
            chosen_all.append(order[:upto].tolist())
            score[b][c[b]] = tb + 10.0 * chosen[rid].float()
        patch.state["coarse-to-fine"] = {"regions": chosen_all, "region": self.region}
        return topk_keep(score, c, self.keep)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "region": self.region}
