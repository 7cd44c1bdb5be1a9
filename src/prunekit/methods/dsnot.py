"""DSnoT: training-free refinement of a sparse mask by pruning-and-growing.

Zhang, Zhao, Lin, Sun, Yao, Han, Tanner, Liu, Ji: *Dynamic Sparse No Training: Training-Free
Fine-tuning for Sparse LLMs*, ICLR 2024 (arXiv:2310.08915).

It takes a pruned weight Ŵ = M ⊙ W of any method and swaps pruned and kept weights row by row,
one pair per cycle, to shrink the row's **expected reconstruction error**

    Δ_i = Σ_j (W_ij − Ŵ_ij) · E[X_j]                  (the output's expected change, per row i)

while the number of zeros never changes. With D_ij = W_ij · E[X_j] (what weight j adds to
output i on average), one cycle of row i is

    grow   r = the pruned weight with sign(D_ir) = sign(Δ_i) and the largest |D_ir| / Var[X_r]^γ
    prune  p = the kept weight with sign(Ŵ_ip E[X_p]) = −sign(Δ_i) and the smallest Wanda
               importance |Ŵ_ip| · ‖X_p‖₂                    (N:M: the least important kept
               weight of r's group of M, so every group keeps its count)
    Δ_i'   = Δ_i − D_ir + Ŵ_ip E[X_p]
    accept if |Δ_i| > ε and |Δ_i'| < |Δ_i| and sign(Δ_i') = sign(Δ_i)   (else row i stops)

for at most ``cycles`` cycles. Each list is ranked once, up front (the paper's and the reference
code's static order), so a row walks down it; only its first ``cycles`` entries can be reached, so
only those are selected (a partial sort), ties in index order. A revived weight takes its dense
value W_ir.

Deviations, stated:

* **Any base method.** Δ uses the base's output Ŵ, so after SparseGPT (which also moves the kept
  weights) Δ includes those updates; with a mask-only base (magnitude, Wanda) Ŵ = M ⊙ W and Δ
  is exactly the paper's.
* **Never worse.** A swap must shrink |Δ_i| (the reference's N:M branch accepts any swap that
  keeps the sign, which may enlarge it); candidates whose contribution has the wrong sign or is
  zero are never proposed (the reference may reach them once a list runs out).
* ``same_sign=False`` drops the sign condition (the reference code's default for unstructured
  masks): a swap may cross zero, as long as |Δ_i| shrinks; the next cycle then works from the
  other end of each list.
* ε is in units of E[X] (one token's expected error). The reference sums token activations per
  sequence (2048 tokens), so its ε = 0.1 is ≈ 5e-5 here, our default.
* Every Linear is refined by default; the reference code skips MLP layers by default
  (``layers="attention"`` does the same: a Linear is attention's if a part of its name contains
  ``attn`` or ``attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..patterns import NM, Unstructured
from ..settings import setting

_TINY_VAR = 1e-12


def expected_error(W: Tensor, W_hat: Tensor, mean: Tensor) -> Tensor:
    """Δ_i = Σ_j (W_ij − Ŵ_ij) E[X_j] per output row [out] (fp32)."""
    return (W.float() - W_hat.float()) @ mean.float()


@dataclass(frozen=True)
class DSnoT:
    """The refiner: ``refine(W, Ŵ, stats, pattern) -> (Ŵ', info)``; its fields are the
    ``refine_*`` settings of every unstructured/N:M method."""

    summary: ClassVar[str] = "DSnoT (Zhang et al. 2024): training-free prune-and-grow swaps that shrink each row's expected error"

    cycles: int = setting(50, ge=1, le=100000, help="most prune-and-grow cycles per output row (the paper's T)")
    threshold: float = setting(5e-5, ge=0, help="stop a row once |expected error| <= this (the paper's ε, per token)")
    var_power: float = setting(1.0, ge=0, le=10, help="growing ranks |W_ij E[X_j]| / Var[X_j]^this (the paper's γ)")
    same_sign: bool = setting(True, help="a swap must keep the sign of the row's expected error (false: it may cross zero)")
    layers: str = setting("all", choices=("all", "attention", "mlp"),
                          help="which Linears to refine (attention: the reference code's default, MLPs left as the base pruned them)")
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.INPUT_MEAN, Stat.INPUT_VAR, Stat.INPUT_SQNORM})

    @torch.no_grad()
    def refine(
        self, weight: Tensor, pruned: Tensor, stats: LayerStats, pattern: Unstructured | NM
    ) -> tuple[Tensor, dict[str, Any]]:
        if self.layers != "all" and _kind(stats.name) != self.layers:
            return pruned, {"dsnot_skipped": True}
        W = weight.detach().float()
        W_hat = pruned.detach().float().clone()
        dev = W.device
        mean = stats[Stat.INPUT_MEAN].to(dev, torch.float32)
        var = stats[Stat.INPUT_VAR].to(dev, torch.float32)
        x_norm = stats[Stat.INPUT_SQNORM].to(dev, torch.float32).sqrt()
        rows, cols = W.shape
        keep = W_hat != 0
        D = W * mean[None, :]  # contribution of weight j at its dense value
        C = W_hat * mean[None, :]  # its current contribution
        delta = (D - C).sum(1)  # Δ [rows]
        sign0 = torch.sign(delta)
        before = delta.abs().mean().item()

        # growing lists: pruned weights by D / Var^γ, positives (largest first) and negatives
        # (most negative first); a row reads at most ``cycles`` entries of a list
        k = min(self.cycles, cols)
        inf = float("inf")
        g_key = (D / var.clamp_min(_TINY_VAR).pow(self.var_power)[None, :]).masked_fill_(keep, 0.0)
        up, down = g_key > 0, g_key < 0
        g_pos_list = _first_k(g_key.masked_fill(~up, -inf), k, largest=True)
        g_neg_list = _first_k(g_key.masked_fill(~down, inf), k, largest=False)
        g_pos, g_neg = up.count_nonzero(1), down.count_nonzero(1)
        gp, gn = torch.zeros_like(g_pos), torch.zeros_like(g_pos)

        S = W_hat.abs() * x_norm[None, :]  # Wanda importance of the kept weights
        nm = pattern if isinstance(pattern, NM) else None
        if nm is None:  # pruning lists: kept weights of each sign, least important first
            minus, plus = keep & (C < 0), keep & (C > 0)
            p_neg_list = _first_k(S.masked_fill(~minus, inf), k, largest=False)
            p_pos_list = _first_k(S.masked_fill(~plus, inf), k, largest=False)
            p_neg, p_pos = minus.count_nonzero(1), plus.count_nonzero(1)
            pn, pp = torch.zeros_like(g_neg), torch.zeros_like(g_neg)
        else:
            nm._check(cols)
            S_nm = S.masked_fill(~keep, inf)  # revived weights are set to inf: never pruned again
            offsets = torch.arange(nm.m, device=dev)

        idx = torch.arange(rows, device=dev)
        active = torch.ones(rows, dtype=torch.bool, device=dev)
        swaps, cycles = 0, 0
        for _ in range(self.cycles):
            pos = delta > 0
            r = torch.where(pos, g_pos_list[idx, gp.clamp(max=k - 1)], g_neg_list[idx, gn.clamp(max=k - 1)])
            g_ok = torch.where(pos, gp < g_pos, gn < g_neg)
            if nm is None:
                p = torch.where(pos, p_neg_list[idx, pn.clamp(max=k - 1)], p_pos_list[idx, pp.clamp(max=k - 1)])
                p_ok = torch.where(pos, pn < p_neg, pp < p_pos)
            else:
                start = r - r % nm.m
                block = S_nm.gather(1, start[:, None] + offsets[None, :])
                best, j = block.min(1)
                p, p_ok = start + j, torch.isfinite(best)
            new = delta - D[idx, r] + C[idx, p]
            ok = active & g_ok & p_ok & (delta.abs() > self.threshold) & (new.abs() < delta.abs())
            if self.same_sign:
                ok &= torch.sign(new) == sign0
            if not bool(ok.any()):
                break
            cycles += 1
            i, ri, pi = idx[ok], r[ok], p[ok]
            W_hat[i, ri], W_hat[i, pi] = W[i, ri], 0.0
            C[i, ri], C[i, pi] = D[i, ri], 0.0
            if nm is not None:
                S_nm[i, ri], S_nm[i, pi] = inf, inf
            delta = torch.where(ok, new, delta)
            gp += (ok & pos).long()
            gn += (ok & ~pos).long()
            if nm is None:
                pn += (ok & pos).long()
                pp += (ok & ~pos).long()
            swaps += int(ok.sum())
            active = ok
        info = {"dsnot_swaps": swaps, "dsnot_cycles": cycles,
                "dsnot_err_before": before, "dsnot_err_after": delta.abs().mean().item()}  # fmt: skip
        return W_hat.to(pruned.dtype), info


def _kind(name: str) -> str:
    """``"attention"`` for a Linear under an attention module (``self_attn``, ``attn``,
    ``self_attention``, ``attention``), else ``"mlp"``."""
    return "attention" if any("attn" in part or "attention" in part for part in name.lower().split(".")) else "mlp"


def _first_k(key: Tensor, k: int, largest: bool) -> Tensor:
    """Column indices [rows, k] of each row's k largest (or smallest) keys, best first; equal keys
    in index order (only a tie across the k-th place is resolved as ``torch.topk`` does). On CPU
    a full stable sort of every row is ~6x slower than this partial selection."""
    idx = torch.topk(key, k, dim=1, largest=largest, sorted=False).indices.sort(dim=1).values
    order = torch.sort(key.gather(1, idx), dim=1, descending=largest, stable=True).indices
    return idx.gather(1, order)


REFINERS: dict[str, type] = {"dsnot": DSnoT}
