"""GBLM-Pruner: gradient-based language model pruning.

Das, Sun, Ma, Shen, *Beyond Size: How Gradients Shape Pruning Decisions in Large Language
Models* (arXiv:2311.04902). Score of weight W_ij [out, in], compared within each output row
(Wanda's group) or per group of m inputs for N:M; no weight update:

    S_ij = |W_ij| · ‖X_j‖₂ / √N  +  |W_ij| · √( Σ_n (α · g_n,ij)² )

where g_n = ∂ℓ_n/∂W is the gradient of the mean next-token loss ℓ_n of calibration window n
(n = 1..N) on the **dense** model, ‖X_j‖₂ the L2 norm of input feature j over all calibration
tokens, and α the gradient scale (100 in the paper's code). The per-window gradients come from
the engine's gradient pre-pass (``engine/gradients.py``: ``Σ_n g_n²`` in fp32, one window at a
time), the input norms from the layer loop as for Wanda (so they see the pruned earlier blocks,
as in the reference implementation, while the gradients are those of the dense model).

The 1/√N on the activation term is the reference code's normalisation (its Wanda statistic is
``‖X_j‖²/N`` with N the number of windows); it fixes the balance of the two terms, so α keeps the
paper's meaning. With ``alpha=0`` the score is Wanda's up to a per-matrix constant: the same mask.

Balance on SmolLM2-135M (a 2-window x 512-token C4 probe, not a benchmark): with α = 100 the
gradient term is 0.1–1% of the activation term (median over the weights of a matrix), so the mask
stays close to Wanda's; the paper tuned α on LLaMA-7B. ``--set alpha=...`` gives the gradients
more say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..settings import setting
from .base import ScoreMethod, register_method


@register_method("gblm")
@dataclass(frozen=True)
class GBLM(ScoreMethod):
    alpha: float = setting(100.0, ge=0, le=1e9, help="gradient scale α of |W|·√Σ(α·g)² (the paper's code: 100)")
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.INPUT_SQNORM, Stat.GRAD_SQ, Stat.GRAD_WINDOWS})
    summary: ClassVar[str] = "|W|·‖X_j‖/√N + |W|·√Σ(α·g)², gradients of the dense LM loss (Das et al. 2023)"

    def score(self, weight: Tensor, stats: LayerStats) -> Tensor:
        dev = weight.device
        N = float(stats[Stat.GRAD_WINDOWS])
        x_norm = (stats[Stat.INPUT_SQNORM].to(dev) / N).sqrt()  # [in]
        g_norm = stats[Stat.GRAD_SQ].to(dev).sqrt().mul_(self.alpha)  # [out, in] = √Σ(α·g)²
        W = weight.float().abs()
        return W * x_norm[None, :] + W * g_norm


__all__ = ["GBLM"]
