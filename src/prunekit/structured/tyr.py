"""Týr-the-Pruner: structural pruning via global sparsity-distribution search.

Li, Xu, Li, Liu, Yin, Li, Barsoum, "Týr-the-Pruner: Structural Pruning LLMs via Global Sparsity
Distribution Optimization", arXiv:2503.09657 (NeurIPS 2025).

Algorithm (one *round*; ``rounds`` of them, coarse to fine):

1. **Supernet.** Block by block over ``windows`` calibration windows, collect the Hessians
   ``H = XᵀX`` of the ``o_proj`` and ``down_proj`` inputs. For every *level* around the block's
   current width — MLP widths ``c + l·Δ`` (``l = -levels..levels``), query heads per KV group
   ``q + l`` — choose the removed input columns greedily by the OBS cost of a group
   ``½·tr(W_g (H⁻¹)_gg⁻¹ W_gᵀ)`` (a head = its ``head_dim`` columns, one head per KV group per
   step so every level is GQA-valid; channels in ``obs_rounds`` batches); after each removal
   the OBS update moves the remaining columns and downdates H⁻¹, which leaves the kept
   columns at their least-squares reconstruction ``W_K = W H_{:,K} H_KK⁻¹``. Each level's
   kept indices and weight go to its own safetensors file in a temporary directory: the
   supernet lives on disk, and the search loads only the blocks a candidate changes.
2. **Expectation-error accumulation.** The next block is calibrated on the outputs of this
   block with its ``o_proj`` / ``down_proj`` set to the mean of its level weights (zeros in the
   removed columns): since both are the last Linear of their branch, that is the expected
   branch output over the candidate levels, so later Hessians see the error any choice would
   carry (``accumulate=center`` uses the current level only, ``dense`` none).
3. **Evolutionary search.** The parent starts at the current widths (uniform in round 1).
   Each generation makes ``population`` offspring by 1–4 paired moves (``min`` of two draws):
   one block one level narrower, another of the same kind one level wider, so the parameter
   count never changes. Fitness is the KL divergence from the dense model's next-token
   distribution on *calibration* tokens (windows not used for the Hessians when there are
   enough), in stages (``stage_tokens``): all offspring on the first few tokens, the best
   ``survivors`` on more, the parent joins the last stage (elitist), the best becomes the next
   parent. Fitness token sets are nested and fixed, so a candidate is run only from the first
   block it changes (the parent's hidden states are kept).
4. **Coarse to fine.** The next round halves Δ and rebuilds the supernet around the best
   configuration.

The split between attention and MLP is chosen once (``split``): ``mlp`` (default) keeps every
head and removes MLP channels only (at 20% this is what FLAP's cost plan picks on SmolLM2);
``ratio`` removes ~S of the attention parameters (query heads per KV group, the nearest) and
fills the rest with channels. Moves never cross kinds, as in the reference code, so the split
holds; per-block widths come out as ``prunekit_block_widths`` (``structured/per_block.py``), a
uniform result as a stock config.

Deviations from the paper / reference code: KV heads are always kept (query heads per KV group
are searched), so every level is GQA-valid; the levels of one block are nested (one greedy
removal sequence, each level refitted); fitness token sets are fixed per stage (the reference
draws a new minibatch per selection), which makes the prefix reuse and the elitist comparison
exact; ``accumulate=expectation`` averages the levels uniformly (the released code's fast path
uses the centre level: ``accumulate=center``).
"""

from __future__ import annotations

import copy
import math
import os
import random
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..engine import Stat, capture_block_inputs, run_layerwise
from ..errors import ConfigError
from ..report import PruneReport
from ..search import evolve
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C
from . import surgery

SPEC = {
    "step": Setting(int, 128, ge=1, help="MLP channels between neighbouring levels in round 1 (halved each round)"),
    "levels": Setting(int, 2, ge=1, le=8, help="levels on each side of a block's current width"),
    "rounds": Setting(int, 2, ge=1, le=6, help="coarse-to-fine rounds (supernet rebuilt around the best)"),
    "generations": Setting(int, 10, ge=0, help="generations of the evolutionary search per round"),
    "population": Setting(int, 8, ge=1, help="offspring per generation"),
    "survivors": Setting(str, "2", help="survivors after each stage but the last (comma list)"),
    "stage_tokens": Setting(str, "256,1024", help="fitness tokens per selection stage (comma list, increasing)"),
    "fitness_seqlen": Setting(int, 256, ge=8, help="tokens per fitness sequence"),
    "windows": Setting(int, 8, ge=1, help="calibration windows for the supernet Hessians"),
    "split": Setting(str, "mlp", choices=("mlp", "ratio")),
    "accumulate": Setting(str, "expectation", choices=("expectation", "center", "dense")),
    "obs_rounds": Setting(int, 16, ge=1, help="OBS removal batches for MLP channels"),
    "damp": Setting(float, 0.01, gt=0, lt=1, help="Hessian dampening (fraction of the mean diagonal)"),
    "align": Setting(int, 1, ge=1, help="kept MLP channels are a multiple of this"),
    "seed": Setting(int, 0, ge=0),
}


# --- settings ----------------------------------------------------------------------------------
def _int_list(name: str, text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise ConfigError(f"tyr: setting {name}={text} must be a comma list of positive integers")
    return vals


def _stages(args: dict[str, Any]) -> tuple[list[int], list[int]]:
    tokens = _int_list("stage_tokens", args["stage_tokens"])
    if any(b <= a for a, b in zip(tokens, tokens[1:])):
        raise ConfigError(f"tyr: stage_tokens={args['stage_tokens']} must increase from stage to stage")
    surv = _int_list("survivors", args["survivors"]) if len(tokens) > 1 else []
    if len(surv) != len(tokens) - 1:
        raise ConfigError(
            f"tyr: survivors={args['survivors']} needs {len(tokens) - 1} value(s), one per stage before "
            f"the last of stage_tokens={args['stage_tokens']}"
        )
    if any(b > a for a, b in zip(surv, surv[1:])) or surv and surv[0] > args["population"]:
        raise ConfigError(f"tyr: survivors={args['survivors']} must not grow nor exceed population={args['population']}")
    return tokens, surv


# --- local pruning: OBS selection + least-squares reconstruction -------------------------------
def damped(H: Tensor, damp: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``H`` (fp32 by default) with ``damp x mean(diag)`` added to the diagonal."""
    H = H.to(dtype).clone()
    d = H.diagonal()
    d[d == 0] = 1.0  # an input never seen: keep the system regular (its column's weight is moot)
    d += damp * d.mean()
    return H


def reconstruct(W: Tensor, H: Tensor, keep: Tensor) -> Tensor:
    """Least-squares weights of the kept input columns: ``argmin ‖X Wᵀ − X_K W_Kᵀ‖``,
    ``W_K = W H_{:,K} H_KK⁻¹`` (``W`` [out, in], ``H`` the damped input Gram matrix)."""
    Wd = W.to(H.dtype)
    L = torch.linalg.cholesky(H[keep][:, keep])
    rhs = (Wd @ H[:, keep]).T  # [k, out]
    return torch.cholesky_solve(rhs, L).T.to(W.dtype).contiguous()


def _downdate(W: Tensor, Hinv: Tensor, cols: Tensor) -> None:
    """Remove input columns ``cols``: OBS update of the other weights and of H⁻¹ (in place)."""
    S = torch.linalg.inv(Hinv[cols][:, cols])
    W -= (W[:, cols] @ S) @ Hinv[cols, :]
    Hinv -= Hinv[:, cols] @ S @ Hinv[cols, :]
    W[:, cols] = 0
    Hinv[cols, :] = 0
    Hinv[:, cols] = 0


def obs_channel_levels(W: Tensor, H: Tensor, widths: Sequence[int], rounds: int) -> dict[int, tuple[Tensor, Tensor]]:
    """``{width: (kept input columns, their reconstructed weight)}`` of ``W`` [out, in] for each
    width in ``widths`` (nested sets).

    Columns go in batches by smallest OBS cost ``‖W[:, j]‖² / (2 (H⁻¹)_jj)``; a batch never
    crosses a level, and there are about ``rounds`` batches from the widest to the narrowest.
    After each batch the OBS update moves the other columns and downdates H⁻¹, so the weights
    at a level are the least-squares reconstruction of the kept columns (:func:`reconstruct`)."""
    n = W.shape[1]
    Wk, Hinv = W.to(H.dtype).clone(), torch.cholesky_inverse(torch.linalg.cholesky(H))
    alive = torch.ones(n, dtype=torch.bool)
    out: dict[int, tuple[Tensor, Tensor]] = {}
    targets = sorted({int(w) for w in widths if w <= n}, reverse=True)
    batch = max(1, math.ceil((n - targets[-1]) / rounds)) if targets else 1
    width = n
    for t in targets:
        while width > t:
            k = min(batch, width - t)
            cost = Wk.pow(2).sum(0) / (2 * Hinv.diagonal().clamp_min(1e-30))
            cost[~alive] = math.inf
            cols = cost.topk(k, largest=False).indices
            _downdate(Wk, Hinv, cols)
            alive[cols] = False
            width -= k
        keep = alive.nonzero().flatten()
        out[t] = (keep, Wk[:, keep].to(W.dtype).contiguous())
    return out


def obs_head_levels(W: Tensor, H: Tensor, geo: C.Geometry, per_group: Sequence[int]) -> dict[int, tuple[Tensor, Tensor]]:
    """``{q: (kept query heads, reconstructed o_proj columns)}`` for each count ``q`` of query
    heads per KV group (heads sorted, so every level is GQA-valid).

    Each step removes, in every KV group, the head of smallest group OBS cost
    ``½·tr(W_h ((H⁻¹)_hh)⁻¹ W_hᵀ)`` (``W_h`` its ``head_dim`` columns of ``o_proj``)."""
    hd, G = geo.head_dim, geo.group
    Wk, Hinv = W.to(H.dtype).clone(), torch.cholesky_inverse(torch.linalg.cholesky(H))
    alive = torch.ones(geo.heads, dtype=torch.bool)
    out: dict[int, tuple[Tensor, Tensor]] = {}
    qq = G
    for t in sorted({int(q) for q in per_group if q <= G}, reverse=True):
        while qq > t:
            cost = torch.full((geo.heads,), math.inf, dtype=torch.float64)
            for h in alive.nonzero().flatten().tolist():
                sl = slice(h * hd, (h + 1) * hd)
                Wh = Wk[:, sl]
                cost[h] = 0.5 * (Wh @ torch.linalg.inv(Hinv[sl, sl]) * Wh).sum()
            drop = cost.reshape(geo.kv_heads, G).argmin(1) + torch.arange(geo.kv_heads) * G
            _downdate(Wk, Hinv, surgery.head_channels(drop, hd))
            alive[drop] = False
            qq -= 1
        keep = alive.nonzero().flatten()
        out[t] = (keep, Wk[:, surgery.head_channels(keep, hd)].to(W.dtype).contiguous())
    return out


# --- the supernet on disk ----------------------------------------------------------------------
@dataclass(frozen=True)
class Space:
    """Per-block candidate widths of one round (``attn``: query heads per KV group)."""

    attn: list[list[int]]
    mlp: list[list[int]]


def _grid(center: int, step: int, levels: int, lo: int, hi: int) -> list[int]:
    return [w for w in (center + l * step for l in range(-levels, levels + 1)) if lo <= w <= hi]


class Supernet:
    """Level weights of every block, one safetensors file each, under a temporary directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def path(self, b: int, kind: str, width: int) -> Path:
        return self.root / f"block{b:03d}_{kind}{width}.safetensors"

    def save(self, b: int, kind: str, width: int, keep: Tensor, weight: Tensor) -> None:
        from safetensors.torch import save_file

        p = self.path(b, kind, width)
        save_file({"keep": keep.long().contiguous(), "weight": weight.contiguous()}, str(p))
        self.files.append(p)

    def load(self, b: int, kind: str, width: int) -> tuple[Tensor, Tensor]:
        from safetensors.torch import load_file

        t = load_file(str(self.path(b, kind, width)))
        return t["keep"], t["weight"]


class Tyr:
    """State of one Týr run over a model (dense blocks kept; candidates are copies)."""

    def __init__(self, model: nn.Module, adapter, geo: C.Geometry, costs: C.Costs, args: dict[str, Any],
                 workdir: Path):  # fmt: skip
        self.model, self.adapter, self.geo, self.costs, self.args = model, adapter, geo, costs, args
        self.workdir = workdir
        self.dense = list(adapter.blocks(model))
        self.n = len(self.dense)
        self.net: Supernet | None = None
        self.built: OrderedDict[tuple, nn.Module] = OrderedDict()
        self.loads = 0

    # -- supernet ----------------------------------------------------------------------------
    def o_lin(self, block: nn.Module) -> nn.Linear:
        return self.adapter.attention(block).get_submodule(self.adapter.o)

    def d_lin(self, block: nn.Module) -> nn.Linear:
        return self.adapter.mlp_module(block).get_submodule(self.adapter.mlp_out)

    @torch.no_grad()
    def build(self, rnd: int, space: Space, center: list[tuple[int, int]], ids: Tensor, batch_size: int,
              progress: bool, timings: dict[str, float]) -> None:  # fmt: skip
        """Prune every block at every level of ``space`` and store the levels on disk."""
        geo, a = self.geo, self.args
        self.net = Supernet(self.workdir / f"round{rnd}")
        self.built.clear()
        saved = [(self.o_lin(b).weight.data.clone(), self.d_lin(b).weight.data.clone()) for b in self.dense]
        o_sfx, d_sfx = f".{self.adapter.attn}.{self.adapter.o}", f".{self.adapter.mlp_out}"

        def on_block(i: int, targets, stats) -> None:
            o, d = self.o_lin(self.dense[i]), self.d_lin(self.dense[i])
            names = {id(m): n for n, m in targets.items()}
            Ho = damped(stats[names[id(o)]][Stat.HESSIAN], a["damp"])
            Hd = damped(stats[names[id(d)]][Stat.HESSIAN], a["damp"])
            Wo, Wd = saved[i]
            acc_o, acc_d = [], []
            pruned = [q for q in space.attn[i] if q < geo.group]
            heads = obs_head_levels(Wo, Ho, geo, pruned) if pruned else {}
            for q in space.attn[i]:
                if q == geo.group:
                    acc_o.append(Wo)
                    continue
                keep, Wq = heads[q]
                self.net.save(i, "attn", q, keep, Wq)
                acc_o.append(_scatter(Wq, surgery.head_channels(keep, geo.head_dim), Wo.shape))
            pruned = [c for c in space.mlp[i] if c < geo.intermediate]
            chans = obs_channel_levels(Wd, Hd, pruned, a["obs_rounds"]) if pruned else {}
            for c in space.mlp[i]:
                if c == geo.intermediate:
                    acc_d.append(Wd)
                    continue
                keep, Wc = chans[c]
                self.net.save(i, "mlp", c, keep, Wc)
                acc_d.append(_scatter(Wc, keep, Wd.shape))
            mode = a["accumulate"]
            if mode == "expectation":
                o.weight.data.copy_(torch.stack(acc_o).mean(0))
                d.weight.data.copy_(torch.stack(acc_d).mean(0))
            elif mode == "center":
                o.weight.data.copy_(acc_o[space.attn[i].index(center[i][0])])
                d.weight.data.copy_(acc_d[space.mlp[i].index(center[i][1])])

        try:
            run_layerwise(
                self.model, self.adapter, ids, needs={Stat.HESSIAN},
                select=lambda n, _m: n.endswith(o_sfx) or (n.endswith(d_sfx) and o_sfx not in n),
                on_block=on_block, batch_size=batch_size,
                propagate="dense" if a["accumulate"] == "dense" else "pruned",
                progress=C.progress_wrap(progress, f"tyr supernet r{rnd + 1}"), timings=timings,
            )  # fmt: skip
        finally:
            for b, (wo, wd) in zip(self.dense, saved):
                self.o_lin(b).weight.data.copy_(wo)
                self.d_lin(b).weight.data.copy_(wd)

    # -- candidates ----------------------------------------------------------------------------
    @torch.no_grad()
    def block(self, b: int, q: int, c: int) -> nn.Module:
        """Block ``b`` with ``q`` query heads per KV group and ``c`` MLP channels (from disk)."""
        key = (b, q, c)
        if key in self.built:
            self.built.move_to_end(key)
            return self.built[key]
        geo = self.geo
        if q == geo.group and c == geo.intermediate:
            return self.dense[b]
        blk = copy.deepcopy(self.dense[b])
        if q != geo.group:
            keep, W = self.net.load(b, "attn", q)
            surgery.shrink_attention(blk, self.adapter, geo.head_dim, keep, torch.arange(geo.kv_heads))
            self.o_lin(blk).weight.data.copy_(W)
            self.loads += 1
        if c != geo.intermediate:
            keep, W = self.net.load(b, "mlp", c)
            surgery.shrink_mlp(blk, self.adapter, keep)
            self.d_lin(blk).weight.data.copy_(W)
            self.loads += 1
        self.built[key] = blk
        while len(self.built) > 4 * self.n:
            self.built.popitem(last=False)
        return blk


def _scatter(W: Tensor, cols: Tensor, shape: torch.Size) -> Tensor:
    full = torch.zeros(shape, dtype=W.dtype, device=W.device)
    full[:, cols] = W
    return full


# --- fitness: KL to the dense model on calibration tokens --------------------------------------
class Fitness:
    """KL(dense ‖ candidate) per token on fixed calibration sequences, staged, prefix-reusing."""

    def __init__(self, tyr: Tyr, seqs: Tensor):
        self.t = tyr
        model, adapter = tyr.model, tyr.adapter
        self.inputs = capture_block_inputs(model, adapter, seqs, batch_size=1)  # one sequence each
        self.norm = model.get_submodule(adapter.norm_path) if adapter.norm_path else nn.Identity()
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.tokens_per_seq = int(seqs.shape[1])
        self.teacher_p: list[Tensor] = []
        self.teacher_plogp: list[Tensor] = []
        self.block_passes = 0  # block forwards of one sequence
        self.evaluations = 0
        for s, inp in enumerate(self.inputs):
            h = inp.hidden
            for b in range(tyr.n):
                h = _out(tyr.dense[b](h, **inp.kwargs_for(b)))
            logp = torch.log_softmax(self._logits(h).float(), -1)
            self.teacher_p.append(logp.exp().to(torch.float16))
            self.teacher_plogp.append((logp.exp() * logp).sum(-1).sum())
        self.cache: list[list[Tensor]] | None = None  # per sequence: parent's block inputs + output
        self.parent: tuple | None = None

    def _logits(self, h: Tensor) -> Tensor:
        z = self.head(self.norm(h))
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z[0]

    def _kl(self, s: int, h: Tensor) -> float:
        logq = torch.log_softmax(self._logits(h).float(), -1)
        return float(self.teacher_plogp[s] - (self.teacher_p[s].float() * logq).sum())

    @torch.no_grad()
    def set_parent(self, cfg: tuple, states: list[list[Tensor]] | None = None) -> None:
        if states is None:
            states = []
            blocks = [self.t.block(b, *cfg[b]) for b in range(self.t.n)]
            for inp in self.inputs:
                h, st = inp.hidden, []
                for b, blk in enumerate(blocks):
                    st.append(h)
                    h = _out(blk(h, **inp.kwargs_for(b)))
                states.append([*st, h])
                self.block_passes += self.t.n
        self.cache, self.parent = states, cfg

    @torch.no_grad()
    def __call__(self, cfg: tuple, n_seqs: int, record: bool = False) -> tuple[float, list | None]:
        """Mean per-token KL of ``cfg`` on the first ``n_seqs`` sequences (and, with ``record``,
        its block inputs for every sequence, to become the next parent's cache)."""
        assert self.cache is not None and self.parent is not None
        diff = [b for b in range(self.t.n) if cfg[b] != self.parent[b]]
        m = diff[0] if diff else self.t.n
        blocks = [self.t.block(b, *cfg[b]) for b in range(m, self.t.n)]
        total, states = 0.0, [] if record else None
        for s in range(n_seqs):
            inp, h = self.inputs[s], self.cache[s][m]  # the parent's input to block m (or its output)
            st = list(self.cache[s][:m])
            for b, blk in zip(range(m, self.t.n), blocks):
                st.append(h)
                h = _out(blk(h, **inp.kwargs_for(b)))
            self.block_passes += self.t.n - m
            total += self._kl(s, h)
            if record:
                states.append([*st, h])
        self.evaluations += 1
        return total / (n_seqs * self.tokens_per_seq), states


def _out(o: Any) -> Tensor:
    return o[0] if isinstance(o, (tuple, list)) else o


# --- evolutionary search -----------------------------------------------------------------------
def mutate(parent: tuple, space: Space, rng: random.Random) -> tuple | None:
    """1–4 paired moves (one block a level narrower, another of the same kind a level wider)."""
    cfg = [list(x) for x in parent]
    kinds = [k for k, opts in ((0, space.attn), (1, space.mlp)) if sum(len(o) > 1 for o in opts) >= 2]
    if not kinds:
        return None
    for _ in range(min(rng.randint(1, 4), rng.randint(1, 4))):
        for _attempt in range(100):
            k = rng.choice(kinds)
            opts = space.attn if k == 0 else space.mlp
            i, j = rng.randrange(len(cfg)), rng.randrange(len(cfg))
            if i == j:
                continue
            li, lj = opts[i].index(cfg[i][k]), opts[j].index(cfg[j][k])
            if li > 0 and lj + 1 < len(opts[j]):
                cfg[i][k], cfg[j][k] = opts[i][li - 1], opts[j][lj + 1]
                break
    out = tuple(tuple(x) for x in cfg)
    return None if out == parent else out


def search(tyr: Tyr, fit: Fitness, space: Space, start: tuple, stages: list[int], survivors: list[int],
           rng: random.Random, progress: bool) -> tuple[tuple, list[float]]:  # fmt: skip
    """Elitist staged evolutionary search (:func:`prunekit.search.evolve` with Týr's paired-move
    mutation and prefix-reusing KL fitness); returns the best configuration and its fitness curve."""
    a = tyr.args
    fit.set_parent(start)
    res = evolve(start, lambda x, r: mutate(x, space, r), fit, stages=stages, survivors=survivors,
                 population=a["population"], generations=a["generations"], rng=rng,
                 on_parent=fit.set_parent, progress=progress, desc="tyr search")  # fmt: skip
    return res.best, res.curve


# --- the method --------------------------------------------------------------------------------
def _aligned(c: int, align: int, hi: int) -> int:
    return max(align, min(hi // align * align, int(round(c / align)) * align))


def initial_widths(geo: C.Geometry, costs: C.Costs, sparsity: float, split: str, align: int) -> tuple[int, int]:
    """Uniform start: (query heads per KV group, MLP channels)."""
    budget = sparsity * costs.block
    q = geo.group
    if split == "ratio" and geo.attn_prunable:
        attn_total = geo.heads * costs.q_head + geo.kv_heads * costs.kv_head
        best = None
        for qq in range(1, geo.group + 1):
            rm = C.attn_removed(geo, costs, geo.kv_heads, qq)
            if rm > budget:
                continue
            key = abs(rm / attn_total - sparsity)
            if best is None or key < best[0]:
                best = (key, qq)
        q = best[1] if best else geo.group
    rm = C.attn_removed(geo, costs, geo.kv_heads, q)
    ch = geo.intermediate - round((budget - rm) / costs.channel)
    ch = _aligned(ch, align, geo.intermediate)
    if ch < 1:
        raise ConfigError(f"tyr: sparsity {sparsity:g} leaves no MLP channel with split={split}")
    return q, ch


def _fitness_seqs(ids: Tensor, first: int, seqlen: int, count: int) -> Tensor:
    """``count`` sequences of ``seqlen`` tokens: window after window (those from ``first`` on,
    not used for the Hessians, when there are any), then later segments of the same windows."""
    pool = ids[first:] if ids.shape[0] > first else ids
    per = ids.shape[1] // seqlen
    out = []
    for k in range(count):
        w, seg = k % pool.shape[0], k // pool.shape[0]
        if seg >= per:
            raise ConfigError(
                f"tyr: stage_tokens needs {count} sequences of {seqlen} tokens; the calibration set has "
                f"{pool.shape[0] * per}: lower stage_tokens / fitness_seqlen or add calibration windows"
            )
        out.append(pool[w, seg * seqlen : (seg + 1) * seqlen])
    return torch.stack(out)


SUPERNET_PREFIX = "prunekit-tyr-"


def supernet_dir(parent: str | Path | None = None) -> Path:
    """A new temporary folder for the on-disk supernet, ``prunekit-tyr-PID-XXXX``; folders of
    earlier runs whose process is gone (killed before their ``finally`` ran) are removed first."""
    from ..export.hf import pid_alive

    base = Path(parent or tempfile.gettempdir())
    for q in base.glob(SUPERNET_PREFIX + "*"):
        pid = q.name[len(SUPERNET_PREFIX) :].split("-", 1)[0]
        if q.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(q, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SUPERNET_PREFIX}{os.getpid()}-", dir=base))


def _check_per_block_loadable(family: str) -> None:
    C.check_per_block_loadable("tyr", family, "searched per-block widths",
                               "use flap or wanda-sp for a stock config")


@STRUCTURED_METHODS.register("tyr")
def tyr(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
        progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("tyr", config.method_args, SPEC)
    stages_tok, survivors = _stages(args)
    adapter, geo, costs, sparsity = C.start(model, config)
    C.check_feasible(geo, costs, sparsity)
    _check_per_block_loadable(adapter.family)
    align = args["align"]
    if align > geo.intermediate:
        raise ConfigError(f"tyr: align={align} exceeds the {geo.intermediate} MLP channels")
    ids = C.get_calib(config, calib, tokenizer)
    seqlen = min(args["fitness_seqlen"], int(ids.shape[1]))
    stages = [math.ceil(t / seqlen) for t in stages_tok]
    if any(b <= a for a, b in zip(stages, stages[1:])):
        raise ConfigError(f"tyr: stage_tokens={args['stage_tokens']} round to the same number of "
                          f"{seqlen}-token sequences; space the stages further apart")  # fmt: skip
    sn_ids = ids[: args["windows"]]
    fit_ids = _fitness_seqs(ids, args["windows"], seqlen, stages[-1])
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    q0, c0 = initial_widths(geo, costs, sparsity, args["split"], align)
    n = len(adapter.blocks(model))
    cfg: tuple = tuple((q0, c0) for _ in range(n))
    rng = random.Random(args["seed"])
    timings: dict[str, float] = {"supernet": 0.0, "search": 0.0}
    workdir = supernet_dir()
    log: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        state = Tyr(model, adapter, geo, costs, args, workdir)
        t0 = time.perf_counter()
        fit = Fitness(state, fit_ids)
        timings["teacher"] = time.perf_counter() - t0
        step = args["step"]
        for rnd in range(args["rounds"]):
            step_r = max(align, (step >> rnd) // align * align)
            attn_pruned = geo.attn_prunable and any(q < geo.group for q, _ in cfg)
            space = Space(
                attn=[_grid(q, 1, args["levels"], 1, geo.group) if attn_pruned else [q] for q, _ in cfg],
                mlp=[_grid(c, step_r, args["levels"], align, geo.intermediate) for _, c in cfg],
            )  # fmt: skip
            t0 = time.perf_counter()
            tm: dict[str, float] = {}
            state.build(rnd, space, list(cfg), sn_ids, config.calib.batch_size, progress, tm)
            timings["supernet"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            ev0, bp0 = fit.evaluations, fit.block_passes
            cfg, curve = search(state, fit, space, cfg, stages, survivors, rng, progress)
            timings["search"] += time.perf_counter() - t0
            log.append({"round": rnd + 1, "step": step_r, "fitness": curve,
                        "files": len(state.net.files), "evaluations": fit.evaluations - ev0,
                        "full_forwards": (fit.block_passes - bp0) / n})  # fmt: skip
            if rnd + 1 < args["rounds"]:
                shutil.rmtree(state.net.root, ignore_errors=True)
        t0 = time.perf_counter()
        blocks = adapter.blocks(model)
        final = [state.block(b, *cfg[b]) for b in range(n)]
        for b in range(n):
            blocks[b] = final[b]
        timings["install"] = time.perf_counter() - t0
        supernet_files = sum(r["files"] for r in log)
        loads = state.loads
        evals, passes = fit.evaluations, fit.block_passes
        del state, fit
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        model.train(was_training)
    settings = {k: v for k, v in args.items() if v is not None}
    settings["start"] = {"heads": q0 * geo.kv_heads, "kv_heads": geo.kv_heads, "intermediate": c0}
    settings["search"] = {
        "rounds": log, "fitness": "KL(dense || pruned) per token, calibration tokens",
        "fitness_sequences": stages, "fitness_seqlen": seqlen, "evaluations": evals,
        "block_forwards": passes, "full_forwards": passes / n, "forward_tokens": passes / n * seqlen,
        "supernet_files": supernet_files, "supernet_loads": loads,
        "supernet_windows": int(sn_ids.shape[0]),
    }  # fmt: skip
    report = C.new_report("tyr", settings, sparsity, ids, config)
    report.timings.update(timings)
    report.notes.append(
        f"tyr: {evals} candidate evaluations ({passes / n:.1f} one-sequence full-model forward equivalents of "
        f"{seqlen} tokens) over {args['rounds']} round(s); supernet of {supernet_files} level files on disk "
        f"(removed); fitness on calibration tokens only"
    )
    per_block = len(set(cfg)) > 1
    return C.finish(model, adapter, geo, report, shapes, before, t_start, None, per_block=per_block)


tyr.summary = "Týr-the-Pruner: on-disk OBS supernet + evolutionary search of per-block widths (KL fitness)"
