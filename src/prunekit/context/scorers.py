"""Unit scorers: each returns a score per sentence unit and per passage, never a budget.

- ``random``: seeded uniform scores (the floor every method must beat).
- ``bm25``: Okapi BM25 (Robertson & Zaragoza 2009) of each unit for the question, IDF over the
  units of all passages (``rank_bm25`` when installed, else the short formula below).
- ``similarity``: cosine of the all-MiniLM-L6-v2 embeddings of unit and question.
- ``selective-context``: self-information ``I(u) = Σ_{t∈u} −log p(x_t | x_<t)`` under a causal LM
  over each passage (Li et al., arXiv 2310.06201); query-agnostic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError
from ..text.spans import Span

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being do does did what which who "
    "whom whose when where why how that this these those it its as into than then there their they he she his her "
    "i you we our your not no".split()
)  # fmt: skip


@dataclass
class Scores:
    units: list[list[float]]
    passages: list[float]
    chunks: int = 0
    notes: list[str] = field(default_factory=list)


def terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _max_or_zero(xs: Sequence[float]) -> float:
    return max(xs) if xs else 0.0


class RandomScorer:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, question: str, passages: Sequence[str], units: list[list[Span]]) -> Scores:
        import random

        rng = random.Random(self.seed)
        us = [[rng.random() for _ in u] for u in units]
        return Scores(us, [_max_or_zero(u) for u in us])


def bm25_scores(query: list[str], docs: list[list[str]], k1: float = 1.5, b: float = 0.75, eps: float = 0.25) -> list[float]:
    """Okapi BM25 with ``rank_bm25``'s IDF floor (``eps`` × mean IDF for negative IDFs)."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        BM25Okapi = None
    if not docs:
        return []
    if all(not d for d in docs):
        return [0.0] * len(docs)
    if BM25Okapi is not None:
        return [float(x) for x in BM25Okapi([d or ["\u0000"] for d in docs], k1=k1, b=b, epsilon=eps).get_scores(query)]
    N = len(docs)
    avgdl = sum(len(d) for d in docs) / N
    df: dict[str, int] = {}
    for d in docs:
        for w in set(d):
            df[w] = df.get(w, 0) + 1
    idf = {w: math.log(N - n + 0.5) - math.log(n + 0.5) for w, n in df.items()}
    floor = eps * sum(idf.values()) / len(idf)
    idf = {w: (v if v >= 0 else floor) for w, v in idf.items()}
    out = []
    for d in docs:
        tf: dict[str, int] = {}
        for w in d:
            tf[w] = tf.get(w, 0) + 1
        s = 0.0
        for q in query:
            f = tf.get(q, 0)
            s += idf.get(q, 0.0) * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


class BM25Scorer:
    def score(self, question: str, passages: Sequence[str], units: list[list[Span]]) -> Scores:
        q = terms(question)
        flat = [terms(p[u.start : u.end]) for p, us in zip(passages, units) for u in us]
        s = bm25_scores(q, flat)
        out, i = [], 0
        for us in units:
            out.append(s[i : i + len(us)])
            i += len(us)
        ps = bm25_scores(q, [terms(p) for p in passages])
        return Scores(out, ps)


class SimilarityScorer:
    def score(self, question: str, passages: Sequence[str], units: list[list[Span]]) -> Scores:
        from .encoder import MiniLM

        enc = MiniLM.load()
        texts = [question] + [p[u.start : u.end] for p, us in zip(passages, units) for u in us] + list(passages)
        e, extra = enc.embed(texts)
        sims = (e[1:] @ e[0]).tolist()
        n_units = sum(len(u) for u in units)
        out, i = [], 0
        for us in units:
            out.append(sims[i : i + len(us)])
            i += len(us)
        notes = [f"{extra} text(s) longer than the encoder's 512-token window were embedded in chunks"] if extra else []
        return Scores(out, sims[n_units:], chunks=extra, notes=notes)


class SelectiveContextScorer:
    """Self-information of each unit under a causal LM (query-agnostic)."""

    def __init__(self, lm: Any = None) -> None:
        self.lm = lm

    def _model(self):
        lm = self.lm
        if isinstance(lm, tuple):
            return lm
        from ..models import load_model

        model, tok = load_model(lm)
        self.lm = (model, tok)
        return self.lm

    def score(self, question: str, passages: Sequence[str], units: list[list[Span]]) -> Scores:
        import torch

        from ..models.limits import max_positions

        model, tok = self._model()
        if not getattr(tok, "is_fast", False):
            raise ConfigError("selective-context needs a fast tokenizer (character offsets)")
        window = min(max_positions(model) or 2048, 2048) - 1
        bos = tok.bos_token_id
        out, chunks = [], 0
        for p, us in zip(passages, units):
            enc = tok(p, add_special_tokens=False, return_offsets_mapping=True)
            ids, offs = enc["input_ids"], enc["offset_mapping"]
            info = [0.0] * len(ids)
            starts = list(range(0, len(ids), window)) or [0]
            chunks += len(starts) - 1
            for s in starts:
                piece = ids[s : s + window]
                if not piece:
                    continue
                row = ([bos] if bos is not None else []) + piece
                with torch.inference_mode():
                    logits = model(input_ids=torch.tensor([row])).logits[0].float()
                lp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(row[1:])[:, None])[:, 0]
                vals = (-lp).tolist()
                if bos is None:  # the first token has no context: give it the mean
                    vals = [sum(vals) / len(vals) if vals else 0.0] + vals
                for k, v in enumerate(vals[: len(piece)]):
                    info[s + k] = v
            sc = [0.0] * len(us)
            j = 0
            for k, (a, _) in enumerate(offs):
                while j < len(us) and a >= us[j].end:
                    j += 1
                if j < len(us) and us[j].start <= a < us[j].end:
                    sc[j] += info[k]
            out.append(sc)
        notes = [f"{chunks} extra LM window(s) for passages longer than {window} tokens"] if chunks else []
        return Scores(out, [sum(s) for s in out], chunks=chunks, notes=notes)


def build(method: str, *, seed: int = 0, lm: Any = None) -> Any:
    if method == "random":
        return RandomScorer(seed)
    if method == "bm25":
        return BM25Scorer()
    if method == "similarity":
        return SimilarityScorer()
    if method == "selective-context":
        return SelectiveContextScorer(lm)
    if method == "provence":
        from .provence import ProvenceScorer

        return ProvenceScorer.load()
    raise ConfigError(f"unknown context method {method!r}")
