"""Parallel reasoning with trace pruning: self-consistency, ESC, DeepConf and DeepPrune over one batch.

``reason(model, tokenizer, question, n=8, prune=...)`` samples ``n`` chains of thought and votes on
their final answers (self-consistency, Wang et al., arXiv 2203.11171). The traces are generated
**batched**: the prompt is prefilled once, its KV cache is repeated to the live batch, every step is
one forward for all live traces, and a stopped trace leaves the batch (its cache rows are dropped)
at once, so a saved token is a saved row of compute. Trace ``i`` samples with its own
``torch.Generator`` seeded ``seed + i``: its tokens do not depend on the other traces, and batched
generation equals one-at-a-time generation for the same seeds.

Pruners (``prune=`` spec), each a hook that stops traces:

* ``None`` / ``"sc"`` -- full self-consistency: all ``n`` traces to the end, majority vote.
* ``"esc:window=W"`` -- Early-Stopping Self-Consistency (Li et al., arXiv 2401.10480): traces are
  sampled in windows of ``W``; when the ``W`` answers of a window all agree, sampling stops (the
  remaining traces are never started); majority vote over the answers sampled.
* ``"deepconf:warmup=M,window=w,percentile=p,k=20"`` (or ``deepconf:low`` / ``deepconf:high``) --
  DeepConf online (Fu et al., arXiv 2508.15260): token confidence ``C_t = -(1/k) sum_j log P_t(j)``
  over the ``k`` likeliest tokens; group confidence ``C_G`` = mean ``C_t`` over the last ``w`` tokens.
  ``M`` warm-up traces run to the end; the stopping bar ``s`` = the ``p``-th percentile of their
  lowest group confidences (``p=90``: DeepConf-low, keep the top 10%; ``p=10``: DeepConf-high).
  Every later trace stops as soon as its ``C_G < s``. Vote: confidence-weighted (weight = the
  trace's lowest ``C_G``) over warm-up traces at or above ``s`` and the later traces not stopped.
* ``"deepprune:JUDGE[,k=K,tau=T]"`` -- DeepPrune (Tu et al., arXiv 2510.08483): when the traces
  reach ``K`` tokens, online greedy clustering in trace order: a trace whose judged probability of
  reaching the same answer as a running cluster (mean over the cluster's members' prefixes) is at
  least ``tau`` joins the best such cluster and is stopped; otherwise it founds a new cluster and
  runs on. Vote: over clusters, each counting its members, with its founder's answer.

Costs are counted in the model's tokens: ``tokens`` (generated, all traces), ``forwards`` (decode
steps, one per step for the whole batch) and ``rows`` (the sum of batch sizes: token-rows computed).
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, DataError
from . import answers as A

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CONF_TOPK = 20  # DeepConf's k: the log-probabilities averaged into a token's confidence

# ------------------------------------------------------------------------------------ data types


@dataclass
class Trace:
    """One sampled chain of thought."""

    index: int
    seed: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    answer: str | None = None  # canonical final answer (``answers.key``), None if it states none
    stopped: bool = False  # ended by the pruner (not by end-of-sequence or the token limit)
    why: str = ""  # "eos" | "length" | the pruner's reason
    started: bool = False  # ESC never starts the traces after an agreeing window
    confidences: list[float] = field(default_factory=list)  # C_t per generated token
    cluster: int | None = None  # DeepPrune: the cluster (its founder's index)
    weight: float = 1.0  # the trace's vote weight (DeepConf: its lowest group confidence)
    votes: bool = True  # the trace's answer enters the vote

    def to_dict(self, with_tokens: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "confidences"}
        if not with_tokens:
            d.pop("tokens")
        d["n_tokens"] = len(self.tokens)
        return d


@dataclass
class ReasonStats:
    tokens: int = 0  # generated tokens, all traces
    forwards: int = 0  # decode forwards (one per step for the whole live batch)
    rows: int = 0  # sum over forwards of the batch size: token-rows computed
    prefill_tokens: int = 0  # prompt tokens prefilled (once)
    batch_sizes: list[int] = field(default_factory=list)  # the live batch at every forward
    judge_calls: int = 0  # DeepPrune: pairs judged
    judge_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch_sizes")
        d["mean_batch"] = self.rows / self.forwards if self.forwards else 0.0
        return d


@dataclass
class ReasonResult:
    answer: str | None  # the voted (canonical) answer
    traces: list[Trace]
    stats: ReasonStats
    prune: str
    votes: dict[str, float] = field(default_factory=dict)  # answer -> vote weight
    threshold: float | None = None  # DeepConf's bar s

    @property
    def tokens(self) -> int:
        return self.stats.tokens

    def to_dict(self, with_tokens: bool = False) -> dict[str, Any]:
        return {"answer": self.answer, "prune": self.prune, "votes": self.votes, "threshold": self.threshold,
                **self.stats.to_dict(), "traces": [t.to_dict(with_tokens) for t in self.traces]}  # fmt: skip


# ----------------------------------------------------------------------------- batched sampling


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                getattr(getattr(model, "config", None), "eos_token_id", None),
                getattr(tokenizer, "eos_token_id", None)):  # fmt: skip
        if src is None:
            continue
        ids.update(int(e) for e in (src if isinstance(src, (list, tuple, set)) else [src]))
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):  # chat ends of the families we run
        tid = getattr(tokenizer, "convert_tokens_to_ids", lambda _t: None)(t) if tokenizer is not None else None
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(tid, int) and tid >= 0 and tid != unk:
            ids.add(tid)
    return ids


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """One token from a ``[V]`` float32 logit row: argmax at ``temperature == 0``, else top-p sampling
    with one uniform draw from ``gen`` (inverse CDF over the kept tokens, likeliest first)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    p, idx = torch.sort(probs, descending=True, stable=True)
    c = torch.cumsum(p, dim=-1)
    if top_p < 1.0:
        keep = int(torch.searchsorted(c, torch.tensor(top_p, dtype=c.dtype)).item()) + 1  # smallest set with mass >= top_p
        keep = min(keep, p.numel())
        p, idx, c = p[:keep], idx[:keep], c[:keep]
    u = float(torch.rand((), generator=gen, dtype=torch.float64)) * float(c[-1])
    j = int(torch.searchsorted(c, torch.tensor(u, dtype=c.dtype), right=True).item())
    return int(idx[min(j, idx.numel() - 1)])


def token_confidence(logits: torch.Tensor, k: int = CONF_TOPK) -> torch.Tensor:
    """DeepConf's token confidence per row: minus the mean of the ``k`` largest log-probabilities."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.topk(min(k, logp.shape[-1]), dim=-1).values.mean(dim=-1)


StepHook = Callable[[list[Trace]], dict[int, str]]


class TraceEngine:
    """Samples traces for one prompt: the prompt is prefilled once; each :meth:`run` repeats that
    cache to its batch and decodes the batch in lockstep (one forward per step), dropping the cache
    rows of every trace that ends or that ``hook`` stops."""

    def __init__(self, model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int, temperature: float,
                 top_p: float, stats: ReasonStats | None = None, conf_k: int = CONF_TOPK) -> None:  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.stats = stats if stats is not None else ReasonStats()
        self.conf_k = conf_k
        self.eos = _eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        from .verify import _cache_kwarg

        self.cache_kw = _cache_kwarg(model)
        self.base = None  # the prompt's cache (batch 1), prefix = prompt_ids[:-1]
        if len(self.prompt_ids) > 1:
            x = torch.tensor([self.prompt_ids[:-1]], device=self.device)
            with torch.inference_mode():
                out = model(input_ids=x, use_cache=True)
            self.base = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            self.stats.prefill_tokens += x.shape[1]

    def _cache(self, batch: int):
        if self.base is None:
            return None
        c = copy.deepcopy(self.base)
        if batch > 1:
            c.batch_repeat_interleave(batch)
        return c

    def run(self, traces: list[Trace], hook: StepHook | None = None) -> None:
        """Generate ``traces`` (fresh, ``tokens == []``) to their end, in one batch."""
        if not traces:
            return
        for t in traces:
            t.started = True
        live = list(traces)
        state = self._begin(live)
        st = self.stats
        while live:
            toks, conf, state = self._advance(live, state)
            st.forwards += 1
            st.rows += len(live)
            st.batch_sizes.append(len(live))
            for r, t in enumerate(live):
                t.tokens.append(toks[r])
                t.confidences.append(conf[r])
                st.tokens += 1
                t.why = self._ended(t)
            if hook is not None:
                for idx, why in hook(live).items():
                    t = next((t for t in live if t.index == idx), None)  # a trace no longer live: ignored
                    if t is not None and not t.why:
                        t.why, t.stopped = why, True
            keep = [r for r, t in enumerate(live) if not t.why]
            if len(keep) < len(live):
                state = self._select(state, keep)
                live = [live[r] for r in keep]
        for t in traces:
            self.finish(t)

    # one decode step of the live batch: the model's forward, sampled per trace with its own generator
    def _begin(self, live: list[Trace]) -> dict[str, Any]:
        return {"cache": self._cache(len(live)), "pos": len(self.prompt_ids) - 1,
                "gens": {t.index: torch.Generator().manual_seed(t.seed) for t in live}}  # fmt: skip

    def _advance(self, live: list[Trace], state: dict[str, Any]) -> tuple[list[int], list[float], dict[str, Any]]:
        cache, pos = state["cache"], state["pos"]
        x = torch.tensor([[t.tokens[-1] if t.tokens else self.prompt_ids[-1]] for t in live], device=self.device)
        p = torch.full((len(live), 1), pos, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=x, position_ids=p, use_cache=True,
                             **({self.cache_kw: cache} if cache is not None else {}))  # fmt: skip
        state["cache"] = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        state["pos"] = pos + 1
        logits = out.logits[:, -1, :].float()
        conf = token_confidence(logits, self.conf_k).tolist()
        toks = [sample_token(logits[r], self.temperature, self.top_p, state["gens"][t.index]) for r, t in enumerate(live)]
        return toks, conf, state

    def _ended(self, t: Trace) -> str:
        if t.tokens[-1] in self.eos:
            return "eos"
        return "length" if len(t.tokens) >= self.max_new_tokens else ""

    def _select(self, state: dict[str, Any], keep: list[int]) -> dict[str, Any]:
        if keep and state["cache"] is not None:
            state["cache"].batch_select_indices(torch.tensor(keep, device=self.device))
        return state

    def finish(self, t: Trace) -> None:
        ids = [i for i in t.tokens if i not in self.eos]
        t.text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""


class ReplayEngine(TraceEngine):
    """A :class:`TraceEngine` that replays recorded full traces instead of sampling them.

    Trace ``i`` of a pruned run is a prefix of trace ``i`` of the full run (it samples with its own
    generator, seeded ``seed + i``), so a pruner run over the recording stops the same traces at the
    same tokens as a live run, and spends the same tokens and decode steps, with no model forward.
    ``recorded[i]`` holds trace ``i``'s ``tokens``, ``confidences`` and ``why`` (``eos``/``length``).
    """

    def __init__(self, recorded: list[dict[str, Any]], tokenizer, prompt_ids: list[int] | None = None, *,
                 model=None, stats: ReasonStats | None = None) -> None:  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.prompt_ids = list(prompt_ids or [])
        self.recorded = {int(r.get("index", i)): r for i, r in enumerate(recorded)}
        self.max_new_tokens = max((len(r["tokens"]) for r in recorded), default=0)
        self.temperature, self.top_p = 1.0, 1.0
        self.stats = stats if stats is not None else ReasonStats()
        self.conf_k = CONF_TOPK
        self.eos = _eos_ids(model, tokenizer)
        self.device = torch.device("cpu")
        self.base = None

    def _begin(self, live):
        for t in live:
            if t.index not in self.recorded:
                raise DataError(f"replay: no recorded trace {t.index} (the recording holds {len(self.recorded)})")
        return {}

    def _advance(self, live, state):
        rec = [self.recorded[t.index] for t in live]
        n = [len(t.tokens) for t in live]
        return [r["tokens"][i] for r, i in zip(rec, n)], [float(r["confidences"][i]) for r, i in zip(rec, n)], state

    def _ended(self, t):
        r = self.recorded[t.index]
        return (r.get("why") or "eos") if len(t.tokens) >= len(r["tokens"]) else ""

    def _select(self, state, keep):
        return state


def replay(recorded: list[dict[str, Any]], tokenizer, prune: Any = None, *, kind: str = "gsm8k", model=None,
           prompt_ids: list[int] | None = None, seed: int = 0) -> ReasonResult:  # fmt: skip
    """Run ``prune`` over recorded full self-consistency traces (``reason(..., prune=None)``'s
    ``traces``, with their tokens and confidences): the tokens, decode steps, stopped traces and
    vote a live ``reason(..., prune=prune)`` with the same seeds would give, without generating.

    ``model`` is needed only by a judge on the model's own hidden states (and to check a judge file's
    model). Confidences recorded rounded (``reason`` keeps 4 decimals) can move DeepConf's bar by that much.
    """
    if kind not in A.KINDS:
        raise ConfigError(f"unknown answer kind {kind!r}: use one of {', '.join(A.KINDS)}")
    if not recorded:
        raise DataError("replay: no recorded traces")
    for i, r in enumerate(recorded):
        if not isinstance(r, dict) or not r.get("tokens") or len(r.get("confidences", ())) != len(r["tokens"]):
            raise DataError(f"replay: recorded trace {i} needs non-empty 'tokens' and one 'confidences' entry per token")
    pruner = parse_prune(prune, model=model)
    if isinstance(pruner, DeepConf) and pruner.k != CONF_TOPK:
        raise ConfigError(f"replay: the recording holds confidences over the top {CONF_TOPK} tokens, not k={pruner.k}")
    t0 = time.perf_counter()
    stats = ReasonStats()
    engine = ReplayEngine(recorded, tokenizer, prompt_ids, model=model, stats=stats)
    traces = [Trace(index=int(r.get("index", i)), seed=int(r.get("seed", seed + i))) for i, r in enumerate(recorded)]
    extra = pruner.run(engine, traces, kind)
    answer, votes = majority(traces)
    stats.seconds = time.perf_counter() - t0
    return ReasonResult(answer, traces, stats, pruner.spec(), votes, extra.get("threshold"))


# ------------------------------------------------------------------------------------------ voting


def majority(traces: list[Trace]) -> tuple[str | None, dict[str, float]]:
    """Weighted majority over the voting traces' answers; ties go to the answer seen first."""
    votes: dict[str, float] = {}
    for t in traces:
        if t.votes and t.answer is not None:
            votes[t.answer] = votes.get(t.answer, 0.0) + t.weight
    if not votes:
        return None, votes
    best = max(votes.values())
    return next(a for a, v in votes.items() if v == best), votes


# ----------------------------------------------------------------------------------------- pruners


def _kv(items: list[str], spec: str, allowed: dict[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        k, sep, v = it.partition("=")
        k = k.strip()
        if not sep or k not in allowed:
            raise ConfigError(f"prune spec {spec!r}: unknown setting {it!r} (settings: {', '.join(allowed)})")
        try:
            val = allowed[k](v.strip())
        except ValueError:
            raise ConfigError(f"prune spec {spec!r}: {k}={v!r} is not a {allowed[k].__name__}") from None
        if isinstance(val, float) and not math.isfinite(val):
            raise ConfigError(f"prune spec {spec!r}: {k}={v!r} is not finite")
        out[k] = val
    return out


@dataclass
class Pruner:
    """Base: full self-consistency (no trace is stopped)."""

    name = "sc"

    def spec(self) -> str:
        return self.name

    def run(self, engine: TraceEngine, traces: list[Trace], kind: str) -> dict[str, Any]:
        engine.run(traces)
        _answers(traces, kind)
        return {}


def _answers(traces: list[Trace], kind: str) -> None:
    for t in traces:
        if t.started:
            t.answer = A.key(t.text, kind)


@dataclass
class ESC(Pruner):
    """Early-stopping self-consistency: windows of ``window`` traces, stop once a window agrees."""

    window: int = 4
    name = "esc"

    def spec(self) -> str:
        return f"esc:window={self.window}"

    def run(self, engine, traces, kind):
        for s in range(0, len(traces), self.window):
            win = traces[s : s + self.window]
            engine.run(win)
            _answers(win, kind)
            keys = {t.answer for t in win}
            if len(win) == self.window and len(keys) == 1 and None not in keys and s + self.window < len(traces):
                for t in traces[s + self.window :]:
                    t.stopped, t.why, t.votes = True, f"esc: window {s // self.window} agreed on {win[0].answer}", False
                break
        return {}


def lowest_group_confidence(conf: list[float], window: int) -> float:
    """The minimum over sliding windows of ``window`` tokens of the mean token confidence
    (the mean over all tokens when the trace is shorter than the window)."""
    if not conf:
        return 0.0
    if len(conf) <= window:
        return sum(conf) / len(conf)
    c = torch.tensor(conf, dtype=torch.float64)
    s = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(c, 0)])
    return float(((s[window:] - s[:-window]) / window).min())


@dataclass
class DeepConf(Pruner):
    """DeepConf online: warm-up traces calibrate the bar, later traces stop when ``C_G`` drops below it."""

    warmup: int = 0  # 0: max(1, n // 4)
    window: int = 32
    percentile: float = 90.0
    k: int = CONF_TOPK
    name = "deepconf"

    def spec(self) -> str:
        return f"deepconf:warmup={self.warmup},window={self.window},percentile={self.percentile:g},k={self.k}"

    def run(self, engine, traces, kind):
        engine.conf_k = self.k
        m = min(len(traces), self.warmup or max(1, len(traces) // 4))
        warm, rest = traces[:m], traces[m:]
        engine.run(warm)
        mins = [lowest_group_confidence(t.confidences, self.window) for t in warm]
        bar = float(torch.quantile(torch.tensor(mins, dtype=torch.float64), self.percentile / 100.0))
        for t, v in zip(warm, mins):
            t.weight, t.votes = v, v >= bar
        w = self.window

        def hook(live: list[Trace]) -> dict[int, str]:
            out = {}
            for t in live:
                if len(t.confidences) >= w:
                    g = sum(t.confidences[-w:]) / w
                    if g < bar:
                        out[t.index] = f"deepconf: group confidence {g:.3f} < {bar:.3f}"
            return out

        engine.run(rest, hook)
        for t in rest:
            t.weight = lowest_group_confidence(t.confidences, w)
            t.votes = not t.stopped
        _answers(traces, kind)
        if not any(t.votes and t.answer is not None for t in traces):  # nothing confident enough: all answers vote
            for t in traces:
                t.votes = True
        return {"threshold": bar}


@dataclass
class DeepPrune(Pruner):
    """DeepPrune: judge partial traces at ``k`` tokens, greedy-cluster, stop the redundant ones."""

    judge: Any = None
    judge_path: str = ""
    k: int = 0  # 0: the judge's own prefix length
    tau: float = 0.0  # 0: the judge's own threshold
    name = "deepprune"

    def spec(self) -> str:
        return f"deepprune:{self.judge_path or 'judge'},k={self.prefix},tau={self.threshold:g}"

    @property
    def prefix(self) -> int:
        return self.k or int(self.judge.meta.get("k", 32))

    @property
    def threshold(self) -> float:
        return self.tau or float(self.judge.meta.get("tau", 0.5))

    def run(self, engine, traces, kind):
        k, tau = self.prefix, self.threshold
        tok = engine.tokenizer
        members: dict[int, list[int]] = {}  # founder index -> member indices (founder first)
        prefix_text: dict[int, str] = {}
        emb: dict[int, torch.Tensor] = {}
        st = engine.stats
        done_before: list[Trace] = []

        def text_of(t: Trace) -> str:
            ids = [i for i in t.tokens[:k] if i not in engine.eos]
            return tok.decode(ids, skip_special_tokens=True) if tok is not None else " ".join(map(str, ids))

        def hook(live: list[Trace]) -> dict[int, str]:
            # traces that ended before reaching k found clusters of their own, in order
            for t in live:
                if t.why and len(t.tokens) <= k and t.index not in prefix_text:
                    done_before.append(t)
            arrived = [t for t in live if len(t.tokens) == k and not t.why]
            new = done_before + arrived
            done_before.clear()
            if not new:
                return {}
            t0 = time.perf_counter()
            texts = [text_of(t) for t in new]
            if hasattr(self.judge, "represent"):  # a trained Judge: MiniLM text or the model's hidden states
                ids = [[i for i in t.tokens[:k] if i not in engine.eos] for t in new]
                e = self.judge.represent(texts, ids, model=engine.model, prompt_ids=engine.prompt_ids)
            else:
                e = self.judge.embed(texts)
            for t, s, row in zip(new, texts, e):
                prefix_text[t.index], emb[t.index] = s, row
            out: dict[int, str] = {}
            for t in sorted(new, key=lambda t: t.index):
                best, best_p = None, -1.0
                if members and not t.why:  # a trace that already ended is complete: it keeps its own answer
                    founders = list(members)
                    rows = [emb[i] for f in founders for i in members[f]]
                    owner = [f for f in founders for _ in members[f]]
                    p = self.judge.pair_prob(emb[t.index].expand(len(rows), -1), torch.stack(rows))
                    st.judge_calls += len(rows)
                    for f in founders:
                        pf = float(torch.stack([p[j] for j, o in enumerate(owner) if o == f]).mean())
                        if pf > best_p:
                            best, best_p = f, pf
                if best is not None and best_p >= tau and not t.why:
                    members[best].append(t.index)
                    t.cluster = best
                    out[t.index] = f"deepprune: like trace {best} (p={best_p:.2f})"
                else:
                    members[t.index] = [t.index]
                    t.cluster = t.index
            st.judge_seconds += time.perf_counter() - t0
            return out

        engine.run(traces, hook)
        _answers(traces, kind)
        by_index = {t.index: t for t in traces}
        for t in traces:  # a stopped member votes with its cluster founder's answer
            if t.stopped and t.cluster is not None:
                t.answer = by_index[t.cluster].answer
        return {}


def parse_prune(spec: Any, *, model=None) -> Pruner:
    """A pruner from its spec (see the module docstring); a :class:`Pruner` passes through.

    Raises:
        ConfigError: an unknown pruner or setting, a value out of range, a missing judge.
    """
    if isinstance(spec, Pruner):
        return spec
    if spec is None:
        return Pruner()
    if not isinstance(spec, str):
        raise ConfigError(f"prune must be a spec string or None (got {type(spec).__name__})")
    s = spec.strip()
    name, _, rest = s.partition(":")
    name = name.strip().lower()
    items = [x for x in rest.split(",") if x.strip()] if rest else []
    if name in ("", "none", "sc", "self-consistency"):
        if items:
            raise ConfigError(f"prune spec {spec!r}: self-consistency takes no settings")
        return Pruner()
    if name == "esc":
        kv = _kv(items, spec, {"window": int})
        p = ESC(**kv)
        if p.window < 1:
            raise ConfigError(f"prune spec {spec!r}: window must be >= 1 (got {p.window})")
        return p
    if name == "deepconf":
        preset = {"low": 90.0, "high": 10.0}
        pct = None
        kept = []
        for it in items:
            if it.strip().lower() in preset:
                pct = preset[it.strip().lower()]
            else:
                kept.append(it)
        kv = _kv(kept, spec, {"warmup": int, "window": int, "percentile": float, "k": int})
        if pct is not None and "percentile" not in kv:
            kv["percentile"] = pct
        p = DeepConf(**kv)
        if p.warmup < 0 or p.window < 1 or p.k < 1 or not 0.0 <= p.percentile <= 100.0:
            raise ConfigError(f"prune spec {spec!r}: needs warmup >= 0, window >= 1, k >= 1, 0 <= percentile <= 100")
        return p
    if name == "deepprune":
        paths = [x.strip() for x in items if "=" not in x]
        kv = _kv([x for x in items if "=" in x], spec, {"k": int, "tau": float})
        if len(paths) > 1:
            raise ConfigError(f"prune spec {spec!r}: one judge file at most (deepprune:JUDGE,k=K,tau=T)")
        from .judge import default_judge_path, load_judge

        path = paths[0] if paths else default_judge_path(model)
        if path is None:
            raise ConfigError("deepprune needs a judge: deepprune:JUDGE (train one with `prunekit reason train-judge`)")
        p = DeepPrune(judge=load_judge(path, model=model), judge_path=str(path), **kv)
        if p.k < 0 or not 0.0 <= p.tau < 1.0:
            raise ConfigError(f"prune spec {spec!r}: needs k >= 1 and 0 < tau < 1")
        return p
    raise ConfigError(f"unknown prune spec {spec!r}: use none, esc:window=W, deepconf[:low|high|warmup=M,window=w,"
                      f"percentile=p], or deepprune:JUDGE[,k=K,tau=T]")  # fmt: skip


# ------------------------------------------------------------------------------------------- API


def build_prompt(tokenizer, question: str, *, chat: bool = True, instruction: str = DEFAULT_INSTRUCTION) -> list[int]:
    """The prompt's token ids: ``question`` + the instruction, in the chat template when there is one."""
    if not isinstance(question, str) or not question.strip():
        raise DataError("the question is empty: give the problem text")
    text = f"{question.strip()}\n{instruction}" if instruction else question.strip()
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)  # fmt: skip
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(text)["input_ids"])


def check_sampling(n: int, max_new_tokens: int, temperature: float, top_p: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be an integer >= 1 (got {n!r}): the number of traces to sample")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1 (got {max_new_tokens!r})")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be a number >= 0 (got {temperature!r}; 0 is greedy)")
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must be in (0, 1] (got {top_p!r})")


def reason(model, tokenizer, question: str | list[int], n: int = 8, prune: Any = None, *, max_new_tokens: int = 256,
           temperature: float = 0.7, top_p: float = 0.95, seed: int = 0, kind: str = "gsm8k", chat: bool = True,
           instruction: str = DEFAULT_INSTRUCTION) -> ReasonResult:  # fmt: skip
    """Sample ``n`` reasoning traces for ``question``, prune them with ``prune``, vote.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        question: the problem text (wrapped with ``instruction`` in the chat template), or prompt ids.
        n: traces to sample (>= 1). ``n=1, temperature=0`` is one greedy trace.
        prune: ``None`` (full self-consistency), ``"esc:window=W"``, ``"deepconf[:...]"``,
            ``"deepprune:JUDGE[,k=K,tau=T]"`` or a :class:`Pruner`.
        max_new_tokens, temperature, top_p: sampling, the same for every trace (``temperature=0``: greedy).
        seed: trace ``i`` samples with a ``torch.Generator`` seeded ``seed + i``.
        kind: the answer kind for extraction and voting (``gsm8k``, ``math``, ``mc``).

    Returns:
        :class:`ReasonResult`: the voted ``answer``, every trace (text, tokens, stopped, why) and ``stats``
        (``tokens`` spent, decode ``forwards``, batch ``rows``).
    """
    check_sampling(n, max_new_tokens, temperature, top_p)
    if kind not in A.KINDS:
        raise ConfigError(f"unknown answer kind {kind!r}: use one of {', '.join(A.KINDS)}")
    pruner = parse_prune(prune, model=model)
    ids = list(question) if isinstance(question, (list, tuple)) else build_prompt(tokenizer, question, chat=chat,
                                                                                  instruction=instruction)  # fmt: skip
    if not ids:
        raise DataError("the prompt is empty (no tokens)")
    from ..models.limits import max_positions

    limit = max_positions(model)
    if limit is not None and len(ids) >= limit:
        raise DataError(f"the question has {len(ids)} prompt tokens: this model's context window is {limit}")
    if limit is not None:
        max_new_tokens = min(max_new_tokens, limit - len(ids))
    t0 = time.perf_counter()
    stats = ReasonStats()
    engine = TraceEngine(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         stats=stats)  # fmt: skip
    traces = [Trace(index=i, seed=int(seed) + i) for i in range(n)]
    extra = pruner.run(engine, traces, kind)
    for t in traces:
        t.confidences = [round(c, 4) for c in t.confidences]
    answer, votes = majority(traces)
    stats.seconds = time.perf_counter() - t0
    return ReasonResult(answer, traces, stats, pruner.spec(), votes, extra.get("threshold"))
