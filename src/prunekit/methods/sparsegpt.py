"""SparseGPT: massive language models can be accurately pruned in one-shot.

Frantar & Alistarh, ICML 2023 (arXiv:2301.00774), Algorithm 1. For a Linear with weight
W [out, in] and Hessian H = (2/N) Σ_t x_t x_tᵀ [in, in] of its inputs:

    H ← H + λ I,   λ = damp · mean(diag H)
    U ← Cholesky(H⁻¹)ᵀ  (upper)                       # rows of U give the OBS updates
    for each block of B columns (B = block_size):
        M ← mask of the block: lowest w²/[U]_jj² (unstructured: over the whole block, i.e. the
            paper's adaptive mask selection; N:M: per row, every m columns, at column j % m == 0)
        for column j in the block:
            E_:,j ← (W_:,j − M_:,j ⊙ W_:,j) / U_jj         # pruning error, scaled
            W_:,j: ← W_:,j: − E_:,j · U_j,j:                # OBS update of the block's later columns
        W_:,rest ← W_:,rest − E · U_block,rest              # lazy batch update

The column loop applies each column's update only to the rest of its group of ``group_size``
columns and updates the block's later columns with one matmul per group (the same lazy-batch
idea one level down: the result is the same up to float rounding, 2x faster on CPU). It works on
Wᵀ so that each step reads and writes contiguous memory (another ~1.3x on CPU).

Inputs that never fire (H_jj = 0) get H_jj = 1 and their weights are zeroed, as in the
reference code. If the Cholesky factorisation fails, λ is multiplied by 10 and the attempt
repeated (reported in the layer's info) — never a silent fallback to another method.

``refit=pcg`` (prunekit's option, not in the paper): with SparseGPT's mask fixed, the kept
weights are re-solved to the least-squares optimum min ‖X(W − Ŵ)ᵀ‖² by preconditioned conjugate
gradient started from SparseGPT's weights (the final stage of ALPS, Meng et al. 2024; see
``methods/alps.py``). CG never increases the quadratic, so the layer error can only go down;
the report records both losses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..errors import PrunekitError
from ..patterns import NM, Unstructured, _prune_count, lowest_k
from ..settings import setting
from .base import PruningMethod, register_method

log = logging.getLogger(__name__)


def _tril_inverse(L: Tensor, leaf: int = 192) -> Tensor:
    """L⁻¹ of a lower-triangular L by 2×2 block recursion: [[A, 0], [C, D]]⁻¹ =
    [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]] (about a third fewer flops than solving against the identity)."""
    n = L.shape[0]
    if n <= leaf:
        eye = torch.eye(n, dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L, eye, upper=False)
    h = n // 2
    Ai, Di = _tril_inverse(L[:h, :h], leaf), _tril_inverse(L[h:, h:], leaf)
    out = torch.zeros_like(L)
    out[:h, :h], out[h:, h:] = Ai, Di
    torch.matmul(Di, L[h:, :h] @ Ai, out=out[h:, :h])
    out[h:, :h].neg_()
    return out


def inverse_hessian_factor(H: Tensor, damp: float, max_retries: int = 6) -> tuple[Tensor, float, int]:
    """Upper Cholesky factor U of (H + λI)⁻¹ (H⁻¹ = UᵀU); returns ``(U, λ/mean(diag H), retries)``.

    One Cholesky and one triangular inverse: with P the order-reversing permutation and
    P H P = L Lᵀ, U = P L⁻¹ P is upper triangular and UᵀU = P (P H P)⁻¹ P = H⁻¹ (the reference
    code's Cholesky → cholesky_inverse → Cholesky gives the same U, at twice the cost).
    """
    mean_diag = torch.mean(torch.diag(H))
    ratio = damp
    for attempt in range(max_retries + 1):
        Hd = H.flip(0, 1)
        Hd.diagonal().add_(ratio * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U = _tril_inverse(L).flip(0, 1)
            if bool(torch.isfinite(U).all()):
                return U, ratio, attempt
        ratio *= 10.0
    raise PrunekitError(
        f"SparseGPT: Hessian not positive definite even with dampening {ratio / 10:g}; use more "
        f"calibration samples or a larger --set damp=..."
    )


@register_method("sparsegpt")
@dataclass(frozen=True)
class SparseGPT(PruningMethod):
    block_size: int = setting(128, ge=1, help="columns per OBS block (the paper's B)")
    damp: float = setting(0.01, gt=0, le=100, help="dampening λ as a fraction of mean(diag H)")
    group_size: int = setting(32, ge=1, help="columns whose OBS updates are applied one by one (speed only)")
    refit: str = setting("none", choices=("none", "pcg"),
                         help="pcg: least-squares refit of the kept weights on SparseGPT's mask (ALPS's last stage)")
    refit_iters: int = setting(50, ge=1, le=100000, help="conjugate-gradient steps of the refit")
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})
    summary: ClassVar[str] = "blockwise OBS prune + weight reconstruction (Frantar & Alistarh 2023)"

    def prune(
        self, weight: Tensor, stats: LayerStats, pattern: Unstructured | NM, sparsity: float
    ) -> tuple[Tensor, dict[str, Any]]:
        # Work on a copy of Wᵀ [in, out]: a column of W (one OBS step) is then a contiguous row.
        WT = weight.detach().t().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        H = stats[Stat.HESSIAN].to(WT.device, torch.float32).clone()  # [in, in]
        cols, rows = WT.shape
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        WT[dead] = 0.0
        U, damp_used, retries = inverse_hessian_factor(H, self.damp)
        if retries:
            log.warning("%s: Cholesky failed; retried with dampening %g", stats.name, damp_used)
        nm = pattern if isinstance(pattern, NM) else None
        B, G = self.block_size, self.group_size
        if nm is not None:
            nm._check(cols)
            if B % nm.m or G % nm.m:
                raise PrunekitError(
                    f"SparseGPT: block_size ({B}) and group_size ({G}) must be multiples of M={nm.m} "
                    f"for pattern {nm}, or its groups straddle blocks; e.g. --set block_size=128"
                )
        for i1 in range(0, cols, B):
            i2 = min(i1 + B, cols)
            W1 = WT[i1:i2]  # [b, out] view: updated in place, lazily from earlier blocks
            U1 = U[i1:i2, i1:i2]
            d1 = torch.diagonal(U1)
            E1 = torch.empty_like(W1)  # scaled errors (w - q) / U_jj
            if nm is None:  # adaptive mask: the lowest w²/U_jj² over the whole [out, B] block
                k = _prune_count(W1.numel(), sparsity)
                s = (W1.pow(2) / d1.pow(2)[:, None]).t().reshape(1, -1)  # W's order: ties by position
                M1 = lowest_k(s, k).view(rows, i2 - i1).t()
                Ms = M1 / d1[:, None]  # mask scaled by 1/U_jj
            else:
                M1 = torch.empty_like(W1, dtype=torch.bool)
                Ms = torch.empty_like(W1)
            for g1 in range(0, i2 - i1, G):  # column groups: OBS updates stay inside the group
                g2 = min(g1 + G, i2 - i1)
                for j in range(g1, g2):
                    if nm is not None and j % nm.m == 0:  # N:M mask from the updated weights
                        sj = W1[j : j + nm.m].pow(2) / d1[j : j + nm.m, None].pow(2)
                        M1[j : j + nm.m] = lowest_k(sj.t(), nm.m - nm.n).t()
                        torch.div(M1[j : j + nm.m], d1[j : j + nm.m, None], out=Ms[j : j + nm.m])
                    e = torch.mul(W1[j], Ms[j], out=E1[j])
                    if j + 1 < g2:
                        W1[j + 1 : g2].addr_(U1[j, j + 1 : g2], e, alpha=-1.0)
                if g2 < i2 - i1:  # the block's later columns, one matmul per group
                    W1[g2:].addmm_(U1[g1:g2, g2:].t(), E1[g1:g2], alpha=-1.0)
            W1.masked_fill_(M1, 0.0)
            if i2 < cols:  # lazy batch update of the remaining blocks
                WT[i2:].addmm_(U[i1:i2, i2:].t(), E1, alpha=-1.0)
        info = {"damp": damp_used, "cholesky_retries": retries, "dead_inputs": int(dead.sum())}
        W_new = WT.t().contiguous()
        if self.refit == "pcg":
            from .alps import layer_loss, pcg_refit

            W0 = weight.detach().to(torch.float32)
            W0 = W0.masked_fill(dead[None, :], 0.0)
            Hn = stats[Stat.HESSIAN].to(W_new.device, torch.float32).clone()
            Hn[dead, dead] = 1.0
            Hn /= torch.diagonal(Hn).mean().clamp_min(1e-30)
            Hn.diagonal().add_(self.damp)
            before = layer_loss(W0, W_new, Hn)
            W_new = pcg_refit(W0, Hn, W_new != 0, W_new, self.refit_iters)
            info.update(loss_obs=before, loss_refit=layer_loss(W0, W_new, Hn))
        return W_new.to(weight.dtype), info
