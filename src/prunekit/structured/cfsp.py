"""CFSP: coarse-to-fine activation-guided structured pruning of the FFN (Wang, Ma, Wang, Chen, Fan,
Shan, Yang, Xu, Liu, Qin; COLING 2025, arXiv:2409.13199).

One forward pass of the dense model over the calibration windows gives both granularities.

Coarse (inter-block) importance: the angular distance between a block's input and output,

    I_l = E_t[ arccos(cos(h_t^(l), h_t^(l+1))) / π ]

A block that barely turns its input is least important and loses the most. Blocks keep the
fraction ``k_l = (1 - s) · σ(a·z_l) / mean_j σ(a·z_j)`` of their MLP channels, ``z`` the
standardised ``I`` and ``s`` the MLP channel sparsity that meets the budget; when a block would
keep more than all of its channels the deviations from the mean are shrunk until it keeps
exactly all (the mean, hence the budget, is unchanged).

Fine (intra-block) importance of MLP channel ``j``, from the weights of the three projections
and the channel's activation norm ``a_j = ||X_j||₂`` (the down-projection input over all
calibration tokens), each weight taken relative to the weights it competes with::

    S_j = a_j^c · (1/d) Σ_i [  |W^down_ij| a_j^b / Σ_k |W^down_ik| a_k^b       (share of j in output i)
                             + |W^up_ji|   / Σ_k |W^up_ki|                     (share of j in input i)
                             + |W^gate_ji| / Σ_k |W^gate_ki| ]

(``d`` the hidden size; a fused gate/up projection counts part by part; a non-gated MLP has one
input term). Each block keeps its ``k_l · m`` highest-scoring channels. Attention is not pruned
(the paper prunes the FFN intermediate dimension only), so the budget — ``S`` of the
decoder-block parameters — is met with MLP channels alone. Widths differ per block, so the
output has per-block widths (``prunekit.load`` or ``from_pretrained(..., trust_remote_code=True)``).
``align=N`` (default 64 from 1024 channels up) keeps a multiple of N channels per block with the
total within N/2 channels of the budget (``common.align_widths``); the paper rounds to multiples
of 128 for the same reason.

Differences from the released code (github.com/wyxscir/CFSP), and why:

* Fine score: the released code divides every term by the channel's *own* column sum
  (``|W_ij| / Σ_i |W_ij|``), so the mean over ``i`` is exactly ``1/d`` for each term and the
  score collapses to ``(3/d) · a_j^c``: activations only, the weights drop out. We implement the
  formula as the paper describes it, each weight relative to the weights it competes with (the
  other channels feeding the same output of ``down_proj``, reading the same input of
  ``up``/``gate``), so weights and activations both count. ``score=activation`` gives the
  released code's effective score ``a_j^c`` (same ranking).
* Allocation: the released code centres the *summed* (not averaged) angular distances and
  divides by 1e4 before the sigmoid, which makes the spread depend on the number of calibration
  tokens; we standardise (``z``) so that ``a`` alone sets the spread.
* No recovery fine-tuning (the paper's importance-guided LoRA is a separate stage; see
  ``prunekit recover``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..engine import Stat, capture_block_inputs
from ..engine.layerwise import collect_block_stats, propagate_block
from ..engine.targets import prunable_in
from ..errors import ConfigError
from ..report import PruneReport
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C
from . import surgery

SPEC = {
    "a": Setting(float, 1.0, gt=0, help="sigmoid sharpness of the block allocation (larger: more uneven)"),
    "b": Setting(float, 1.0, ge=0, help="activation exponent inside the down_proj term"),
    "c": Setting(float, 1.0, ge=0, help="activation exponent of the channel score"),
    "score": Setting(str, "paper", choices=("paper", "activation"),
                     help="paper: weights x activations (the paper's formula); activation: a_j^c (released code)"),
    "align": C.ALIGN_SETTING,
}


# --- coarse: block importance and allocation ----------------------------------------------------
def angular_distance(x_in: Tensor, x_out: Tensor) -> Tensor:
    """Per-token angular distance ``arccos(cos(x_in, x_out)) / π`` in [0, 1]; inputs [..., hidden]."""
    cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def keep_fractions(importance: list[float], keep_mean: float, a: float = 1.0) -> list[float]:
    """Kept MLP fraction per block, mean ``keep_mean``, ordered like ``importance`` (higher keeps more)."""
    imp = torch.tensor(importance, dtype=torch.float64)
    sd = imp.std() if imp.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    z = (imp - imp.mean()) / sd if sd > 0 else torch.zeros_like(imp)
    sig = torch.sigmoid(a * z)
    k = keep_mean * sig / sig.mean()
    if k.max() > 1.0:  # shrink the spread around the mean so the most important block keeps all
        k = keep_mean + (k - keep_mean) * (1.0 - keep_mean) / (k.max() - keep_mean)
    return k.clamp(0.0, 1.0).tolist()


# --- fine: channel importance inside a block ----------------------------------------------------
def fine_scores(W_down: Tensor, W_ins: list[Tensor], act_norm: Tensor, b: float = 1.0, c: float = 1.0,
                kind: str = "paper") -> Tensor:  # fmt: skip
    """CFSP channel scores ``S_j`` [m].

    Args:
        W_down: the MLP output projection's weight [d, m] (``down_proj`` / ``fc2``).
        W_ins: the input projections' weights [m, d] (``gate_proj`` and ``up_proj``, or ``fc1``).
        act_norm: ``a_j = ||X_j||₂`` of the down-projection input [m].
    """
    a = act_norm.float().clamp_min(0)
    if kind == "activation":
        return a.pow(c)
    Wd = W_down.float().abs() * a.pow(b)[None, :]  # [d, m]
    total = Wd.sum(1, keepdim=True)  # per output i: everything feeding it
    r = (Wd / torch.where(total > 0, total, torch.ones_like(total))).mean(0)
    for W in W_ins:
        Wa = W.float().abs()  # [m, d]
        col = Wa.sum(0, keepdim=True)  # per input i: every channel reading it
        r = r + (Wa / torch.where(col > 0, col, torch.ones_like(col))).mean(1)
    return a.pow(c) * r


def _mlp_in_weights(mlp: nn.Module, adapter) -> list[Tensor]:
    return [lin.weight.data[surgery.row_index(lin, rows)] for lin, rows in surgery.mlp_in_parts(mlp, adapter)]


# --- the method -----------------------------------------------------------------------------------
@torch.no_grad()
def block_statistics(model: nn.Module, adapter, ids: Tensor, batch_size: int, progress=None
                     ) -> tuple[list[float], list[Tensor]]:  # fmt: skip
    """One dense forward: per block the mean angular distance and the down-projection input norms."""
    inputs = capture_block_inputs(model, adapter, ids, batch_size)
    blocks = adapter.blocks(model)
    d_suffix = f".{adapter.mlp_out}"
    o_suffix = f".{adapter.attn}.{adapter.o}"
    importance: list[float] = []
    norms: list[Tensor] = []
    stop_ok: dict = {}
    it = range(len(blocks))
    for i in progress(it) if progress else it:
        block = blocks[i]
        prefix = adapter.block_prefix(i)
        targets = {n: m for n, m in prunable_in(block, prefix).items()
                   if n.endswith(d_suffix) and o_suffix not in n}  # fmt: skip
        kind = (type(block), tuple(n[len(prefix):] for n in targets))
        stats, outs = collect_block_stats(block, i, targets, inputs, frozenset({Stat.INPUT_SQNORM}), 0,
                                          True, stop_ok, kind)  # fmt: skip
        total, count = 0.0, 0
        for inp, out in zip(inputs, outs):
            d = angular_distance(inp.hidden, out)
            total += d.sum().item()
            count += d.numel()
        importance.append(total / max(count, 1))
        (st,) = stats.values()
        norms.append(st[Stat.INPUT_SQNORM].float().clamp_min(0).sqrt().cpu())
        propagate_block(block, i, inputs, outs)
    del inputs
    return importance, norms


@STRUCTURED_METHODS.register("cfsp")
def cfsp(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
         progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("cfsp", config.method_args, SPEC)
    adapter, geo, costs, sparsity = C.start(model, config)
    align = C.resolve_align(args, geo.intermediate, "cfsp")
    n_blocks = len(adapter.blocks(model))
    m = geo.intermediate
    n_rm = round(sparsity * costs.block * n_blocks / costs.channel)
    if n_rm > n_blocks * (m - max(align, 1)):
        most = n_blocks * (m - max(align, 1)) * costs.channel / (costs.block * n_blocks)
        raise ConfigError(
            f"cfsp prunes MLP channels only: at most {most:.3f} of the block parameters can go "
            f"(sparsity {sparsity:g} asked); lower --sparsity or use flap/llm-pruner, which prune heads too"
        )
    C.check_per_block_loadable("cfsp", adapter.family)
    ids = C.get_calib(config, calib, tokenizer)
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    t0 = time.perf_counter()
    importance, norms = block_statistics(model, adapter, ids, config.calib.batch_size,
                                         C.progress_wrap(progress, "cfsp stats"))  # fmt: skip
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    keep_total = n_blocks * m - n_rm
    fractions = keep_fractions(importance, keep_total / (n_blocks * m), args["a"])
    widths = C.align_widths([f * m for f in fractions], align, [m] * n_blocks, keep_total)
    info: dict[int, dict[str, Any]] = {}
    for i, block in enumerate(adapter.blocks(model)):
        mlp = adapter.mlp_module(block)
        S = fine_scores(mlp.get_submodule(adapter.mlp_out).weight.data, _mlp_in_weights(mlp, adapter),
                        norms[i], args["b"], args["c"], args["score"])  # fmt: skip
        if widths[i] < m:
            surgery.shrink_mlp(block, adapter, C.select_channels(S, widths[i]))
        info[i] = {"angular_distance": round(importance[i], 6), "keep_fraction": round(fractions[i], 4)}
    settings = {k: v for k, v in args.items() if v is not None}
    settings["align"] = align
    settings["angular_distance"] = [round(x, 6) for x in importance]
    report = C.new_report("cfsp", settings, sparsity, ids, config)
    report.timings.update({"stats_forward": t_stats, "prune": time.perf_counter() - t0})
    report.notes.append("cfsp: MLP channels only (attention kept), per-block widths from angular block importance")
    per_block = len(set(widths)) > 1
    return C.finish(model, adapter, geo, report, shapes, before, t_start, info, per_block=per_block)


cfsp.summary = "CFSP: block budgets from angular distance, MLP channels by weights x activations (per-block widths)"
