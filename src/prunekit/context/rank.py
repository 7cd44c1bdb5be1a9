"""Intra-Document Cascading (IDCM; Hofstätter et al., arXiv 2105.09816): rank documents with an
expensive passage scorer that reads only the top-k passages of each document, chosen by a cheap
student distilled from that scorer.

Algorithm (paper §3, symbols as there)::

    for each document d:  P(d) = sentence windows p_1 … p_n of d          (prunekit.text spans)
        s_ESM(p) = head(bm25(q, p), cos(MiniLM(q), MiniLM(p)))  for every p   (student, cheap)
        P̂(d)    = top-k of P(d) by s_ESM                                      (select)
        s_ETM(p) = log P(q | p) under a causal LM  for p ∈ P̂(d)               (expensive)
        s(d)     = max_{p ∈ P̂(d)} s_ETM(p)                                    (aggregate)

``select``: ``"idcm"`` (the student), ``"bm25"`` / ``"minilm"`` (one student feature alone) or
``"all"`` (every passage to the expensive scorer, the upper bound the cascade must match). With
``k >= n`` every selection equals ``"all"`` exactly. The student head is trained by
``python -m prunekit.context.rank_train`` (distillation from the expensive scores on SciFact train
claims, never the evaluated split); without a head file the features are averaged after
standardisation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, DataError
from ..text.spans import Span

SELECTS = ("idcm", "all", "bm25", "minilm")
AGGREGATES = ("max", "mean")
HEAD = Path(__file__).parent / "heads" / "idcm-student.safetensors"
QL_PROMPT = "Passage: {passage}\nA question or claim about this passage:"
N_FEATURES = 2  # [bm25, MiniLM cosine]

ExpensiveFn = Callable[[str, list[str]], Sequence[float]]


@dataclass
class RankResult:
    """``order``: document indices, best first; ``scores[d]`` the score of document ``d``."""

    order: list[int]
    scores: list[float]
    passages: list[list[Span]]
    selected: list[list[int]]  # per document: indices of the passages the expensive scorer read
    passage_scores: list[list[float | None]]  # expensive score per passage (None: not read)
    student_scores: list[list[float]]
    select: str
    k: int
    expensive_evals: int
    student_evals: int
    student_seconds: float
    expensive_seconds: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def passages_total(self) -> int:
        return sum(len(p) for p in self.passages)

    @property
    def evals_saved(self) -> int:
        return self.passages_total - self.expensive_evals

    def to_dict(self) -> dict[str, Any]:
        return {
            "select": self.select, "k": self.k, "order": self.order,
            "scores": [round(float(s), 6) for s in self.scores], "passages": self.passages_total,
            "selected": self.selected, "expensive_evals": self.expensive_evals, "evals_saved": self.evals_saved,
            "student_evals": self.student_evals, "student_seconds": round(self.student_seconds, 4),
            "expensive_seconds": round(self.expensive_seconds, 4), "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }  # fmt: skip


# --- passages ----------------------------------------------------------------------------------------
def split_passages(doc: str, window: int = 2, stride: int | None = None) -> list[Span]:
    """Windows of ``window`` sentences (``prunekit.text`` rules splitter), moved by ``stride``
    (default ``window``: no overlap); spans index ``doc``. A document with no sentence is one passage."""
    from .. import text as T

    sents = T.sentences(doc, method="rules")
    if not sents:
        return [Span(0, len(doc))]
    stride = stride or window
    out, i = [], 0
    while True:
        w = sents[i : i + window]
        out.append(Span(w[0].start, w[-1].end))
        if i + window >= len(sents):
            return out
        i += stride


# --- the expensive scorer: query likelihood under a causal LM ---------------------------------------
class QueryLikelihood:
    """``s_ETM(p) = log P(q | prompt(p))`` summed over the query's tokens (Nogueira dos Santos et al.
    2020; Sachan et al. 2022 for LLM rerankers), batched with right padding."""

    def __init__(self, lm: Any, batch_size: int = 8, max_passage_tokens: int = 384, prompt: str = QL_PROMPT) -> None:
        if isinstance(lm, tuple):
            self.model, self.tok = lm
        else:
            from ..models import load_model

            self.model, self.tok = load_model(lm)
        self.batch_size, self.max_passage_tokens, self.prompt = batch_size, max_passage_tokens, prompt
        self.notes: list[str] = []

    def __call__(self, query: str, passages: list[str]) -> list[float]:
        import torch

        tok = self.tok
        q = tok(" " + query.strip(), add_special_tokens=False)["input_ids"]
        rows = []
        for p in passages:
            ids = tok(p, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_passage_tokens:
                self.notes.append(f"a passage of {len(ids)} tokens was cut to {self.max_passage_tokens} for the expensive scorer")
                p = tok.decode(ids[: self.max_passage_tokens])
            pre = tok(self.prompt.format(passage=p), add_special_tokens=False)["input_ids"]
            if tok.bos_token_id is not None:
                pre = [tok.bos_token_id] + pre
            rows.append((pre, q))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            seqs = [rows[i][0] + rows[i][1] for i in idx]
            T = max(len(s) for s in seqs)
            x = torch.full((len(seqs), T), pad, dtype=torch.long)
            m = torch.zeros((len(seqs), T), dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, : len(s)] = torch.tensor(s)
                m[r, : len(s)] = 1
            with torch.inference_mode():
                lp = torch.log_softmax(self.model(input_ids=x, attention_mask=m).logits.float(), -1)
            for r, i in enumerate(idx):
                a = len(rows[i][0])
                tgt = torch.tensor(rows[i][1])
                out[i] = float(lp[r, a - 1 : a - 1 + len(tgt)].gather(1, tgt[:, None]).sum())
        return out


# --- the student ---------------------------------------------------------------------------------------
def features(query: str, texts: list[str], use_minilm: bool = True) -> list[list[float]]:
    """``[bm25, cos]`` per passage text; BM25's IDF is over the passages of this call."""
    from .scorers import bm25_scores, terms

    bm = bm25_scores(terms(query), [terms(t) for t in texts])
    if not use_minilm:
        return [[b, 0.0] for b in bm]
    from .encoder import MiniLM

    e, _ = MiniLM.load().embed([query] + texts)
    cos = (e[1:] @ e[0]).tolist()
    return [[b, c] for b, c in zip(bm, cos)]


@dataclass
class StudentHead:
    """``s_ESM = w · z(f) + b`` over standardised features ``z(f) = (f − μ) / σ`` (μ, σ from training)."""

    w: list[float] = field(default_factory=lambda: [0.5, 0.5])
    b: float = 0.0
    mu: list[float] = field(default_factory=lambda: [0.0, 0.0])
    sigma: list[float] = field(default_factory=lambda: [1.0, 1.0])
    meta: dict[str, str] = field(default_factory=dict)

    def __call__(self, f: list[list[float]]) -> list[float]:
        return [sum(w * (x - m) / s for w, x, m, s in zip(self.w, row, self.mu, self.sigma)) + self.b for row in f]

    def save(self, path: str | Path) -> None:
        import torch
        from safetensors.torch import save_file

        t = {"w": torch.tensor(self.w), "b": torch.tensor([self.b]), "mu": torch.tensor(self.mu),
             "sigma": torch.tensor(self.sigma)}  # fmt: skip
        save_file(t, str(path), metadata=self.meta)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "StudentHead":
        p = Path(path) if path is not None else HEAD
        if not p.is_file():
            if path is not None:
                raise ConfigError(f"student head {p} does not exist: train one with python -m prunekit.context.rank_train")
            # untrained fallback: standardise per call (set in rank) and average
            return cls(meta={"trained": "no"})
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            t = {k: f.get_tensor(k).tolist() for k in f.keys()}
            meta = dict(f.metadata() or {})
        return cls(t["w"], float(t["b"][0]), t["mu"], t["sigma"], meta)


# --- rank ----------------------------------------------------------------------------------------------
def check_rank_inputs(query: Any, documents: Any, select: str, k: Any, aggregate: str = "max") -> None:
    if select not in SELECTS:
        import difflib

        close = difflib.get_close_matches(str(select), SELECTS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown select {select!r}: use one of {', '.join(SELECTS)}{hint}")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}: use one of {', '.join(AGGREGATES)}")
    if not isinstance(query, str) or not query.strip():
        raise DataError("the query is empty: give the query the documents are ranked for")
    if isinstance(documents, str) or not isinstance(documents, (list, tuple)):
        raise DataError(f"documents must be a list of strings, got {type(documents).__name__}")
    if not documents:
        raise DataError("documents is empty: give at least one document")
    for i, d in enumerate(documents):
        if not isinstance(d, str):
            raise DataError(f"document {i} is a {type(d).__name__}, not a string")
        if not d.strip():
            raise DataError(f"document {i} is empty: drop it or give its text")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number >= 1 (passages per document the expensive scorer reads), got {k!r}")


def rank(query: str, documents: Sequence[str], select: str = "idcm", k: int = 4, scorer: Any = None, *,
         lm: Any = None, head: StudentHead | str | Path | None = None, window: int = 2, stride: int | None = None,
         aggregate: str = "max") -> RankResult:  # fmt: skip
    """Rank ``documents`` for ``query``. ``scorer``: a callable ``(query, passages) -> scores`` (the
    expensive model), or ``None`` for :class:`QueryLikelihood` over ``lm`` (a model spec or
    ``(model, tokenizer)``). Returns the ranking and the counters (expensive and student evaluations,
    seconds)."""
    check_rank_inputs(query, documents, select, k, aggregate)
    if window < 1 or (stride is not None and stride < 1):
        raise ConfigError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    if scorer is None:
        if lm is None:
            raise ConfigError("rank needs an expensive scorer: pass scorer=callable or lm= a causal LM (e.g. 'smollm2-135m')")
        scorer = QueryLikelihood(lm)
    elif not callable(scorer):
        raise ConfigError(f"scorer must be a callable (query, passages) -> scores, got {type(scorer).__name__}")
    t0 = time.perf_counter()
    spans = [split_passages(d, window, stride) for d in documents]
    texts = [[d[s.start : s.end] for s in sp] for d, sp in zip(documents, spans)]
    flat = [t for ts in texts for t in ts]
    # student: every passage (skipped when it cannot change the selection)
    needs_student = select != "all" and any(len(sp) > k for sp in spans)
    student_flat = [0.0] * len(flat)
    student_evals = 0
    if needs_student:
        f = features(query, flat, use_minilm=select != "bm25")
        if select == "bm25":
            student_flat = [r[0] for r in f]
        elif select == "minilm":
            student_flat = [r[1] for r in f]
        else:
            h = head if isinstance(head, StudentHead) else StudentHead.load(head)
            if h.meta.get("trained") == "no":  # standardise over this call
                import statistics

                cols = list(zip(*f))
                h = StudentHead(mu=[statistics.fmean(c) for c in cols],
                                sigma=[(statistics.pstdev(c) or 1.0) for c in cols], meta=h.meta)  # fmt: skip
            student_flat = h(f)
        student_evals = len(flat)
    t1 = time.perf_counter()
    student, i = [], 0
    for ts in texts:
        student.append(student_flat[i : i + len(ts)])
        i += len(ts)
    chosen = []
    for st in student:
        idx = sorted(range(len(st)), key=lambda j: (-st[j], j)) if select != "all" else list(range(len(st)))
        chosen.append(sorted(idx[:k]) if select != "all" else idx)
    ask = [texts[d][j] for d, js in enumerate(chosen) for j in js]
    vals = [float(v) for v in scorer(query, ask)] if ask else []
    if len(vals) != len(ask):
        raise ConfigError(f"the expensive scorer returned {len(vals)} scores for {len(ask)} passages")
    t2 = time.perf_counter()
    pscores: list[list[float | None]] = [[None] * len(t) for t in texts]
    doc_scores, n = [], 0
    for d, js in enumerate(chosen):
        got = vals[n : n + len(js)]
        n += len(js)
        for j, v in zip(js, got):
            pscores[d][j] = v
        doc_scores.append(max(got) if aggregate == "max" else sum(got) / len(got))
    order = sorted(range(len(documents)), key=lambda d: (-doc_scores[d], d))
    notes = list(getattr(scorer, "notes", []))[:3]
    return RankResult(order, doc_scores, spans, chosen, pscores, student, select, k, len(ask), student_evals,
                      t1 - t0, t2 - t1, time.perf_counter() - t0, notes)  # fmt: skip


def ndcg_at(order: Sequence[int], rel: dict[int, float], n: int = 10) -> float:
    """nDCG@n with graded relevance ``rel[doc]`` (BEIR's: gain = rel, discount log2(rank + 1))."""
    dcg = sum(rel.get(d, 0.0) / math.log2(r + 2) for r, d in enumerate(order[:n]))
    ideal = sorted(rel.values(), reverse=True)[:n]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(order: Sequence[int], rel: dict[int, float], n: int = 100) -> float:
    pos = {d for d, g in rel.items() if g > 0}
    return len(pos & set(order[:n])) / len(pos) if pos else 0.0
