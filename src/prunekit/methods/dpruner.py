"""D-Pruner: domain-specific pruning with a general-importance-regularised domain loss.

Zhang, Liu, Zhao, Cheng, Bao, Zhang, Mitra, Chen, *Pruning as a Domain-specific LLM Extractor*
(NAACL 2024 Findings, arXiv:2405.06275). Two calibration sets: general text (the engine's
calibration data, e.g. C4) and domain text (``domain=SOURCE``, e.g. GSM8K train):

1. General importance of each weight, the OBS error of removing it, on the general data
   (SparseGPT's saliency; H = (2/N) Σ x xᵀ of the Linear's input, U = Cholesky((H + λ_d I)⁻¹)ᵀ):

       G_ij = W_ij² / U_jj²

2. A domain loss regularised to keep generally important weights where they are,
   L = L_NTP(domain) + λ Σ G (W′ − W)², with W′ − W = −η g the step the domain gradient g
   would take. Its gradient, as the paper approximates it (the regulariser's derivative through
   the step, with the empirical Fisher g² for the curvature):

       g̃ = g + 2 λ η² · G ⊙ g²

3. Dual importance: the second-order Taylor estimate of the change of L when W_ij is removed
   (δW = −W, Fisher approximation H_ii ≈ g̃²), accumulated over the domain windows n:

       S_ij = Σ_n | g̃_n,ij W_ij − ½ (g̃_n,ij W_ij)² |

   and the weights with the lowest S are removed, per matrix (the reference's comparison group;
   ``per_row=true`` ranks per output row) or per group of m inputs for N:M. No weight update.

``refit=pcg`` (prunekit's option, not in the paper): with D-Pruner's mask fixed, the kept weights
are re-solved to the least-squares optimum of the layer output on the general calibration data,
min ‖X(W − Ŵ)ᵀ‖², by preconditioned conjugate gradient (as ``sparsegpt --set refit=pcg``; the
Hessians then come from the layer loop, with pruned propagation).

Deviations from the paper, all for a one-shot prune on prunekit's engine: G is computed on the
dense weights in one pass with dense propagation (the reference takes it from inside a SparseGPT
run); the domain gradients are those of the dense model, one per domain window (the reference
accumulates S while fine-tuning with LOMO, so the weights move between batches); the reference
code's extra factors (1/1000 on the regulariser, 1/2000 and a ``w³`` term in S) are left out.
λ and η are settings (defaults: the reference's λ = 0.1 and learning rate 0.03). With these
defaults the regulariser is numerically inert on SmolLM2-135M (a C4 / GSM8K probe of 2 x 512 and
1 x 512 tokens, not a benchmark: |2λη²·G·g²| / |g| is ~1e-12 at the median, 1e-5 at most), so
S is in effect the domain-gradient Taylor score; a much larger ``lam`` lets G matter.

Domain SOURCE: any calibration source (``builtin``, a text/JSONL file, a folder), or
``gsm8k:PATH`` for a question/answer JSONL (GSM8K layout), read as ``Question: …\\nAnswer: …``
documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..data.sources import gsm8k_documents as qa_documents  # the one GSM8K reader (re-exported)
from ..engine.gradients import PrepassInputs, per_window_gradients
from ..engine.layerwise import run_layerwise
from ..engine.stats import LayerStats, Stat
from ..engine.targets import weight_of
from ..errors import ConfigError
from ..patterns import Unstructured
from ..settings import setting
from .base import ScoreMethod, register_method
from .sparsegpt import inverse_hessian_factor


def domain_windows(spec: str, tokenizer: Any, nsamples: int, seqlen: int, seed: int) -> Tensor:
    """Domain calibration windows ``[nsamples, seqlen]`` from a SOURCE or ``gsm8k:PATH``."""
    from ..data import TextSource, calibration_windows

    if spec.lower().startswith("gsm8k:"):
        docs = qa_documents(spec.split(":", 1)[1])
        src: str | TextSource = TextSource(spec, docs, f"GSM8K question/answer pairs ({len(docs)})")
    else:
        src = spec
    return calibration_windows(src, tokenizer, nsamples, seqlen, seed)


def general_importance(W: Tensor, H: Tensor, damp: float) -> Tensor:
    """``G = W² / U_jj²`` [out, in] fp32, U the upper Cholesky factor of (H + λI)⁻¹ (SparseGPT's
    saliency); inputs that never fire (H_jj = 0) get H_jj = 1 and G = 0, as SparseGPT zeroes them."""
    H = H.to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    U, _, _ = inverse_hessian_factor(H, damp)
    G = W.to(torch.float32).pow(2) / torch.diagonal(U).pow(2)[None, :]
    G[:, dead] = 0.0
    return G


def dual_importance_step(W: Tensor, g: Tensor, G: Tensor, lam: float, lr: float) -> Tensor:
    """One domain window's ``| g̃ W − ½ (g̃ W)² |`` with ``g̃ = g + 2 λ η² G ⊙ g²``."""
    gt = g + (2.0 * lam * lr * lr) * G * g.pow(2)
    u = gt * W
    return (u - 0.5 * u.pow(2)).abs_()


@register_method("dpruner")
@dataclass(frozen=True)
class DPruner(ScoreMethod):
    domain: str | None = setting(None, help="domain calibration SOURCE, or gsm8k:PATH for a question/answer JSONL")
    domain_nsamples: int | None = setting(None, ge=1, le=100000, help="domain windows (default: --nsamples)")
    domain_seqlen: int | None = setting(None, ge=2, le=1 << 20, help="tokens per domain window (default: --seqlen)")
    lam: float = setting(0.1, ge=0, le=1e12, help="λ, weight of the general-importance regulariser")
    lr: float = setting(0.03, ge=0, le=1e3, help="η, the step size in the regulariser's (W′ − W) = −η g")
    damp: float = setting(0.01, gt=0, le=100, help="dampening of H for the general importance, fraction of mean(diag H)")
    per_row: bool = setting(False, help="rank within each output row instead of the whole matrix")
    refit: str = setting("none", choices=("none", "pcg"),
                         help="pcg: least-squares refit of the kept weights on the general data (not in the paper)")
    refit_iters: int = setting(50, ge=1, le=100000, help="conjugate-gradient steps of the refit")
    summary: ClassVar[str] = "domain-gradient Taylor score, general-OBS-regularised (Zhang et al. 2024)"

    def effective_pattern(self, pattern):
        if isinstance(pattern, Unstructured) and not self.per_row:
            return Unstructured("layer")
        return pattern

    @property
    def needs(self) -> frozenset[Stat]:  # type: ignore[override]
        return frozenset({Stat.DUAL_IMPORTANCE, *((Stat.HESSIAN,) if self.refit == "pcg" else ())})

    def score(self, weight: Tensor, stats: LayerStats) -> Tensor:
        return stats[Stat.DUAL_IMPORTANCE].to(weight.device)

    def prune(self, weight, stats, pattern, sparsity):
        W_new, info = super().prune(weight, stats, pattern, sparsity)
        if self.refit != "pcg":
            return W_new, info
        from .alps import layer_loss, pcg_refit

        W0 = weight.detach().to(torch.float32)
        H = stats[Stat.HESSIAN].to(W0.device, torch.float32).clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        H /= torch.diagonal(H).mean().clamp_min(1e-30)
        H.diagonal().add_(self.damp)
        keep = (W_new != 0) & ~dead[None, :]
        start = W0 * keep
        before = layer_loss(W0, start, H)
        W_fit = pcg_refit(W0, H, keep, start, self.refit_iters)
        return W_fit.to(weight.dtype), {**info, "loss_mask": before, "loss_refit": layer_loss(W0, W_fit, H)}

    # -- the pre-pass: general importance (layer loop, dense), then domain gradients ----------
    def prepass(self, inp: PrepassInputs) -> dict[str, dict[Stat, Tensor]]:
        if not self.domain:
            raise ConfigError(
                "dpruner needs domain calibration data: --set domain=SOURCE "
                "(e.g. domain=gsm8k:../shared/data/gsm8k/train.jsonl, or any --calib SOURCE)"
            )
        if inp.tokenizer is None:
            raise ConfigError("dpruner needs a tokenizer to draw its domain windows from domain=SOURCE")
        cal = inp.config.calib if inp.config is not None else None
        nsamples = self.domain_nsamples or (cal.nsamples if cal else int(inp.calib.shape[0]))
        seqlen = self.domain_seqlen or (cal.seqlen if cal else int(inp.calib.shape[1]))
        seed = cal.seed if cal else 0
        ids = domain_windows(self.domain, inp.tokenizer, nsamples, seqlen, seed)
        G = self.general_importances(inp)
        return {n: {Stat.DUAL_IMPORTANCE: s} for n, s in self.dual_importances(inp, ids, G).items()}

    def general_importances(self, inp: PrepassInputs) -> dict[str, Tensor]:
        """G per target, from the Hessians of the dense model on the general calibration data."""
        G: dict[str, Tensor] = {}

        def on_block(_i, block_targets, stats) -> None:
            for name, lin in block_targets.items():
                G[name] = general_importance(weight_of(lin), stats[name][Stat.HESSIAN], self.damp)

        run_layerwise(
            inp.model, inp.adapter, inp.calib, needs={Stat.HESSIAN}, select=lambda n, m: n in inp.targets,
            on_block=on_block, batch_size=inp.batch_size, propagate="dense",
        )  # fmt: skip
        return G

    def dual_importances(self, inp: PrepassInputs, ids: Tensor, G: dict[str, Tensor]) -> dict[str, Tensor]:
        """S per target: Σ over domain windows of the regularised second-order Taylor score."""
        W = {n: weight_of(t).to(torch.float32) for n, t in inp.targets.items()}

        def fold(name: str, acc: Tensor | None, g: Tensor) -> Tensor:
            s = dual_importance_step(W[name], g, G[name], self.lam, self.lr)
            return s if acc is None else acc.add_(s)

        return per_window_gradients(inp.model, inp.targets, ids, fold, progress=inp.progress)


__all__ = ["DPruner", "domain_windows", "dual_importance_step", "general_importance", "qa_documents"]
