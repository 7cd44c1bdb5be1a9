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

Inputs that never fire (H_jj = 0) get H_jj = 1 and their weights are zeroed, as in the
reference code. If the Cholesky factorisation fails, λ is multiplied by 10 and the attempt
repeated (reported in the layer's info) — never a silent fallback to another method.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..errors import PrunekitError
from ..patterns import NM, Unstructured, _prune_count
from .base import PruningMethod, register_method

log = logging.getLogger(__name__)


def inverse_hessian_factor(H: Tensor, damp: float, max_retries: int = 6) -> tuple[Tensor, float, int]:
    """Upper Cholesky factor U of (H + λI)⁻¹; returns ``(U, λ/mean(diag H), retries)``."""
    mean_diag = torch.mean(torch.diag(H))
    ratio = damp
    for attempt in range(max_retries + 1):
        Hd = H.clone()
        Hd.diagonal().add_(ratio * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0:
                return U, ratio, attempt
        ratio *= 10.0
    raise PrunekitError(
        f"SparseGPT: Hessian not positive definite even with dampening {ratio / 10:g}; use more "
        f"calibration samples or a larger --set damp=..."
    )


@register_method("sparsegpt")
@dataclass(frozen=True)
class SparseGPT(PruningMethod):
    block_size: int = 128
    damp: float = 0.01
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})
    summary: ClassVar[str] = "blockwise OBS prune + weight reconstruction (Frantar & Alistarh 2023)"

    def prune(
        self, weight: Tensor, stats: LayerStats, pattern: Unstructured | NM, sparsity: float
    ) -> tuple[Tensor, dict[str, Any]]:
        W = weight.detach().to(torch.float32).clone()  # [out, in]
        H = stats[Stat.HESSIAN].to(W.device, torch.float32).clone()  # [in, in]
        rows, cols = W.shape
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        U, damp_used, retries = inverse_hessian_factor(H, self.damp)
        if retries:
            log.warning("%s: Cholesky failed; retried with dampening %g", stats.name, damp_used)
        nm = pattern if isinstance(pattern, NM) else None
        if nm is not None and cols % nm.m:
            nm._check(cols)
        B = self.block_size
        for i1 in range(0, cols, B):
            i2 = min(i1 + B, cols)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()  # [out, B]
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            U1 = U[i1:i2, i1:i2]  # [B, B]
            d1 = torch.diag(U1)  # [B]
            if nm is None:
                # adaptive mask: the lowest w²/U_jj² over the whole [out, B] block
                prune1 = torch.zeros_like(W1, dtype=torch.bool)
                k = _prune_count(W1.numel(), sparsity)
                if k:
                    tmp = (W1.pow(2) / d1.pow(2)[None, :]).flatten()
                    prune1.view(-1)[torch.topk(tmp, k, largest=False).indices] = True
            else:
                prune1 = torch.zeros_like(W1, dtype=torch.bool)
            for i in range(count):
                w = W1[:, i]
                d = d1[i]
                if nm is not None and i % nm.m == 0:
                    tmp = W1[:, i : i + nm.m].pow(2) / d1[i : i + nm.m].pow(2)[None, :]
                    drop = torch.topk(tmp, nm.m - nm.n, dim=1, largest=False).indices
                    prune1.scatter_(1, i + drop, True)
                q = torch.where(prune1[:, i], torch.zeros_like(w), w)
                Q1[:, i] = q
                err = (w - q) / d  # [out]
                W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
                Err1[:, i] = err
            W[:, i1:i2] = Q1
            if i2 < cols:
                W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        info = {"damp": damp_used, "cholesky_retries": retries, "dead_inputs": int(dead.sum())}
        return W.to(weight.dtype), info
