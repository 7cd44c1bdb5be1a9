"""ALPS: an ADMM layer solver for one-shot pruning (Meng, Behdin, Wang, Mazumder, NeurIPS 2024,
arXiv:2406.07831).

For one Linear with weight W₀ [out, in] and H = XᵀX of its calibration inputs (normalised so that
mean(diag H) = 1, plus ``damp`` on the diagonal), solve

    min_W  ½ Σ_r (w_r − w₀_r)ᵀ H (w_r − w₀_r)     s.t.  W ∈ pattern (k weights kept)

by ADMM on the split W = D (D carries the sparsity, W the reconstruction):

    W ← (H + ρI)⁻¹ (H W₀ᵀ − Vᵀ + ρ Dᵀ)     (one eigendecomposition H = QΛQᵀ, reused for every ρ)
    D ← P(W + V/ρ)                          (projection onto the pattern: keep the largest |·|)
    V ← V + ρ (W − D)

with ρ raised as the support settles (every 3 steps: ×1.3 while more than 10% of the kept set
still changes, ×1.2 above 0.5%, ×1.1 otherwise), until the support is stable and W ≈ D or
``iters`` steps. Then, with the support S fixed, **preconditioned conjugate gradient** (diagonal
preconditioner diag H) solves the least-squares refit min ‖X(W₀ − W)‖² over W supported on S,
all rows at once — the exact optimum for the chosen mask, which SparseGPT's one-pass OBS update
only approximates.

Settings follow the paper's description; ``rho``, ``iters``, ``pcg_iters`` and ``damp`` are the
knobs. Differences from the released code (written from the paper, not the code): the ρ
schedule's thresholds above and the H normalisation are this module's choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..patterns import NM, Unstructured
from ..settings import setting
from .base import PruningMethod, register_method


def project(Z: Tensor, pattern: Unstructured | NM, sparsity: float) -> Tensor:
    """Keep-mask of the pattern with the largest |Z| (ties by position, as every mask here)."""
    return pattern.select(Z.abs(), sparsity)


def pcg_refit(W0: Tensor, H: Tensor, keep: Tensor, W: Tensor | None = None, iters: int = 50,
              tol: float = 1e-10) -> Tensor:  # fmt: skip
    """min_W Σ_r (w_r − w₀_r)ᵀ H (w_r − w₀_r) over W with W[~keep] = 0, by diagonally
    preconditioned CG on every row at once. ``W`` is the starting point (default W₀ ⊙ keep)."""
    M = keep.to(W0.dtype)
    W = (W0 * M) if W is None else (W * M)
    d = torch.diagonal(H).clamp_min(1e-12)
    R = ((W0 - W) @ H) * M  # residual = −gradient, on the support
    Z = R / d
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    start = rz.abs().max().clamp_min(1e-30)
    for _ in range(iters):
        AP = (P @ H) * M
        alpha = rz / (P * AP).sum(1, keepdim=True).clamp_min(1e-30)
        W = W + alpha * P
        R = R - alpha * AP
        Z = R / d
        rz_new = (R * Z).sum(1, keepdim=True)
        if float(rz_new.abs().max()) <= tol * float(start):
            break
        P = Z + (rz_new / rz.clamp_min(1e-30)) * P
        rz = rz_new
    return W * M


def layer_loss(W0: Tensor, W: Tensor, H: Tensor) -> float:
    """Σ_r (w_r − w₀_r)ᵀ H (w_r − w₀_r) = ‖X(W₀ − W)ᵀ‖² (up to H's normalisation)."""
    E = W0 - W
    return float(((E @ H) * E).sum())


@register_method("alps")
@dataclass(frozen=True)
class ALPS(PruningMethod):
    rho: float = setting(0.1, gt=0, le=1e6, help="initial ADMM penalty ρ (H is normalised to mean diag 1)")
    iters: int = setting(300, ge=1, le=100000, help="maximum ADMM steps")
    pcg_iters: int = setting(50, ge=0, le=100000, help="conjugate-gradient steps of the final refit")
    damp: float = setting(0.01, ge=0, le=100, help="added to diag H (as a fraction of its mean)")
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})
    summary: ClassVar[str] = "ADMM mask search + PCG least-squares refit (Meng et al. 2024)"

    def prune(self, weight: Tensor, stats: LayerStats, pattern: Unstructured | NM, sparsity: float
              ) -> tuple[Tensor, dict[str, Any]]:  # fmt: skip
        W0 = weight.detach().to(torch.float32, copy=True)
        H = stats[Stat.HESSIAN].to(W0.device, torch.float32).clone()
        dead = torch.diagonal(H) == 0
        W0[:, dead] = 0.0
        H[dead, dead] = 1.0
        H /= torch.diagonal(H).mean().clamp_min(1e-30)
        H.diagonal().add_(self.damp)
        lam, Q = torch.linalg.eigh(H)
        HW0 = W0 @ H  # rows: (H w₀_r)ᵀ, H symmetric
        keep = project(W0, pattern, sparsity)
        D = W0 * keep
        V = torch.zeros_like(W0)
        rho, steps, k = self.rho, 0, int(keep.sum())
        prev = keep
        for t in range(1, self.iters + 1):
            steps = t
            B = HW0 - V + rho * D  # [out, in]
            W = ((B @ Q) / (lam + rho)) @ Q.T  # (H + ρI)⁻¹ applied to every row
            keep = project(W + V / rho, pattern, sparsity)
            D = (W + V / rho) * keep
            V = V + rho * (W - D)
            if t % 3 == 0:
                changed = int((keep != prev).sum()) // 2
                prev = keep
                if changed == 0 and float((W - D).abs().max()) < 1e-4 * float(W0.abs().max().clamp_min(1e-30)):
                    break
                rho *= 1.3 if changed > 0.1 * k else 1.2 if changed > 0.005 * k else 1.1
        admm_loss = layer_loss(W0, D, H)
        W = pcg_refit(W0, H, keep, D, self.pcg_iters) if self.pcg_iters else D
        info = {"admm_steps": steps, "rho_final": rho, "loss_admm": admm_loss,
                "loss_refit": layer_loss(W0, W, H), "dead_inputs": int(dead.sum())}  # fmt: skip
        return W.to(weight.dtype), info
