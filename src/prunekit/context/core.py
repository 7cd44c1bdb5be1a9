"""``prune``: passages → sentence units (``prunekit.text`` spans) → scores → budget → kept spans.

Rate convention: ``prune(rate=r)`` removes the fraction ``r`` of the reader's tokens (prunekit's
sparsity convention: ``r → 0`` keeps everything); ``compress_prompt(rate=r)`` keeps the fraction
``r`` (LLMLingua's convention), and says so in its output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError, DataError, ModelLoadError
from ..text.spans import Span

METHODS = ("provence", "selective-context", "similarity", "bm25", "random")
THRESHOLD_METHODS = ("provence", "similarity")  # scores in [0, 1]
QUERY_AGNOSTIC = ("selective-context", "random")
DEFAULT_READER = "smollm2-135m"
DEFAULT_RATE = 0.5
SEP = "\n\n"


@dataclass
class PruneResult:
    """What ``prune`` kept. ``kept[i]`` are spans of ``passages[i]`` (``passages[i][s.start:s.end]``)."""

    text: str
    kept: list[list[Span]]
    units: list[list[Span]]
    unit_scores: list[list[float]]
    passage_scores: list[float]
    tokens_before: int
    tokens_after: int
    method: str
    rate: float | None
    threshold: float | None
    seconds: float
    chunks: int = 0  # extra encoder windows used for passages longer than the encoder's window
    notes: list[str] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        """Fraction of the reader's tokens removed."""
        return 1.0 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0

    @property
    def units_kept(self) -> int:
        return sum(len(k) for k in self.kept)

    def to_dict(self, spans: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "method": self.method, "rate": self.rate, "threshold": self.threshold,
            "tokens_before": self.tokens_before, "tokens_after": self.tokens_after,
            "achieved_rate": round(self.achieved_rate, 6), "units": sum(len(u) for u in self.units),
            "units_kept": self.units_kept, "passage_scores": [round(float(s), 6) for s in self.passage_scores],
            "chunks": self.chunks, "seconds": round(self.seconds, 4), "notes": self.notes, "text": self.text,
        }  # fmt: skip
        if spans:
            d["kept"] = [[s.to_dict() for s in k] for k in self.kept]
            d["unit_scores"] = [[round(float(x), 6) for x in u] for u in self.unit_scores]
        return d


# --- inputs ------------------------------------------------------------------------------------------
def check_inputs(question: Any, passages: Any, method: str, rate: Any, threshold: Any) -> None:
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown context method {method!r}: use one of {', '.join(METHODS)}{hint}")
    if not isinstance(question, str) or not question.strip():
        raise DataError("the question is empty: give the question the passages should answer")
    if isinstance(passages, str) or not isinstance(passages, (list, tuple)):
        raise DataError(f"passages must be a list of strings, got {type(passages).__name__}")
    if not passages:
        raise DataError("passages is empty: give at least one passage")
    for i, p in enumerate(passages):
        if not isinstance(p, str):
            raise DataError(f"passages must be a list of strings: passage {i} is a {type(p).__name__}")
    if not any(p.strip() for p in passages):
        raise DataError("every passage is empty: give some text to prune")
    check_budget(method, rate, threshold)


def check_budget(method: str, rate: Any, threshold: Any) -> None:
    """One line if the removal rate / score threshold is out of range or does not fit ``method``."""
    if rate is not None and threshold is not None:
        raise ConfigError("give rate or threshold, not both")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 < rate < 1:
            raise ConfigError(f"rate {rate!r} is out of range: it must be a fraction in (0, 1) of reader tokens to remove, e.g. 0.5")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
                or not 0 <= threshold <= 1:  # fmt: skip
            raise ConfigError(f"threshold {threshold!r} is out of range: it must be a number in [0, 1], e.g. 0.1")
        if method not in THRESHOLD_METHODS:
            raise ConfigError(f"method {method!r} has no probability scores to threshold: give rate= instead "
                              f"(threshold works with {', '.join(THRESHOLD_METHODS)})")  # fmt: skip


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a MODEL spec (folder, .gguf, alias) without loading the weights."""
    if spec in _TOKENIZERS:
        return _TOKENIZERS[spec]
    from ..models.loading import check_hub_reachable, resolve_model, source_tokenizer

    src = resolve_model(spec)
    check_hub_reachable(src)
    try:
        tok = source_tokenizer(src)
    except Exception as e:
        raise ModelLoadError(f"could not load the tokenizer of {spec!r}: {' '.join(str(e).split())[:300]}") from e
    _TOKENIZERS[spec] = tok
    return tok


def resolve_tokenizer(reader_tokenizer: Any) -> Any:
    if reader_tokenizer is None:
        return load_tokenizer(DEFAULT_READER)
    if isinstance(reader_tokenizer, str):
        return load_tokenizer(reader_tokenizer)
    if not callable(getattr(reader_tokenizer, "encode", None)):
        raise ConfigError(f"reader_tokenizer must be a tokenizer or a MODEL spec, got {type(reader_tokenizer).__name__}")
    return reader_tokenizer


def check_reader(reader: Any, tok: Any) -> None:
    """A reader model whose vocabulary cannot be the counting tokenizer's is refused."""
    if reader is None:
        return
    emb = reader.get_input_embeddings() if hasattr(reader, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if rows is None:
        raise ConfigError(f"reader must be a causal LM (with input embeddings), got {type(reader).__name__}")
    if len(tok) > rows:
        raise ConfigError(f"the reader's vocabulary has {rows} rows but the counting tokenizer {len(tok)} tokens: "
                          f"pass the reader's own tokenizer as reader_tokenizer")  # fmt: skip


def n_tokens(tok: Any, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False)) if text else 0


def split_units(passages: Sequence[str], unit: str = "sentence") -> list[list[Span]]:
    from .. import text as T

    if unit != "sentence":
        raise ConfigError(f"unit {unit!r}: only 'sentence' units are supported")
    return [T.sentences(p, method="rules") for p in passages]


def join_kept(passages: Sequence[str], units: list[list[Span]], keep: list[list[bool]], sep: str = SEP) -> str:
    """Kept spans sliced from the input: a passage kept whole is verbatim; within a passage kept
    neighbours keep their original gap, others are joined with one space; passages with ``sep``."""
    parts = []
    for p, us, ks in zip(passages, units, keep):
        if us and all(ks):
            parts.append(p)
            continue
        out, prev = [], None
        for j, (u, k) in enumerate(zip(us, ks)):
            if not k:
                continue
            if prev is not None:
                out.append(p[us[prev].end : u.start] if prev == j - 1 else " ")
            out.append(p[u.start : u.end])
            prev = j
        if out:
            parts.append("".join(out))
    return sep.join(parts)


# --- the pipeline ------------------------------------------------------------------------------------
def prune(question: str, passages: Sequence[str], method: str = "provence", rate: float | None = None,
          threshold: float | None = None, reader_tokenizer: Any = None, *, reader: Any = None, seed: int = 0,
          lm: Any = None, sep: str = SEP, scorer: Any = None) -> PruneResult:  # fmt: skip
    """Prune ``passages`` for ``question``: score sentence units with ``method``, then keep them
    under a reader-token budget (``rate`` = fraction of reader tokens removed) or by ``threshold``
    (``provence``: mean token keep-probability > T, default 0.1; ``similarity``: cosine > T).

    ``reader_tokenizer`` (a tokenizer or MODEL spec; default ``smollm2-135m``) counts tokens;
    ``reader`` (optional model) is checked against it. ``lm`` is selective-context's causal LM
    (MODEL spec or ``(model, tokenizer)``; default: the reader spec, else ``smollm2-135m``).
    ``scorer`` replaces the built-in scorer (any object with ``score(question, passages, units)``).
    """
    check_inputs(question, passages, method, rate, threshold)
    tok = resolve_tokenizer(reader_tokenizer)
    check_reader(reader, tok)
    if rate is None and threshold is None:
        if method == "provence":
            from .provence import DEFAULT_THRESHOLD

            threshold = DEFAULT_THRESHOLD
        else:
            rate = DEFAULT_RATE
    t0 = time.perf_counter()
    passages = list(passages)
    units = split_units(passages)
    from . import scorers

    if scorer is None:
        if lm is None and method == "selective-context":
            lm = reader_tokenizer if isinstance(reader_tokenizer, str) else DEFAULT_READER
        scorer = scorers.build(method, seed=seed, lm=lm)
    sc = scorer.score(question, passages, units)
    flat = [s for us in sc.units for s in us]
    from .budget import select, threshold_keep

    before = n_tokens(tok, sep.join(passages))
    if threshold is not None:
        mask = threshold_keep(flat, threshold)
    else:
        costs = [n_tokens(tok, p[u.start : u.end]) for p, us in zip(passages, units) for u in us]
        target = round((1.0 - float(rate)) * before)
        budget, best = target, None
        for _ in range(4):  # separators re-tokenise: correct the budget by the measured difference
            m = select(flat, costs, budget)
            got = n_tokens(tok, join_kept(passages, units, _unflatten(m, units), sep))
            if best is None or abs(got - target) < best[0]:
                best = (abs(got - target), m)
            if abs(got - target) <= max(1, 0.005 * before):
                break
            budget += target - got
        mask = best[1]
    keep = _unflatten(mask, units)
    text = join_kept(passages, units, keep, sep)
    after = n_tokens(tok, text)
    kept = [[Span(u.start, u.end, float(s)) for u, s, k in zip(us, ss, ks) if k] for us, ss, ks in zip(units, sc.units, keep)]
    return PruneResult(text=text, kept=kept, units=units, unit_scores=sc.units, passage_scores=list(sc.passages),
                       tokens_before=before, tokens_after=after, method=method, rate=rate, threshold=threshold,
                       seconds=time.perf_counter() - t0, chunks=sc.chunks, notes=list(sc.notes))  # fmt: skip


def _unflatten(mask: list[bool], units: list[list[Span]]) -> list[list[bool]]:
    out, i = [], 0
    for us in units:
        out.append(mask[i : i + len(us)])
        i += len(us)
    return out


def compress_prompt(context: str | Sequence[str], question: str = "", rate: float = 0.5, *, instruction: str = "",
                    method: str = "provence", reader_tokenizer: Any = None, **kw: Any) -> dict[str, Any]:  # fmt: skip
    """LLMLingua's ``PromptCompressor().compress_prompt(context, question=..., rate=...)`` shape:
    ``rate`` is the fraction of tokens **kept** (LLMLingua's convention; ``rate=1`` returns the
    context unchanged). ``context`` is a string (split into passages at blank lines) or a list."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 < rate <= 1:
        raise ConfigError(f"rate {rate!r} is out of range: compress_prompt keeps this fraction of tokens, in (0, 1]")
    if isinstance(context, str):
        passages = [p for p in context.split(SEP) if p.strip()] or [context]
    else:
        passages = list(context)
    tok = resolve_tokenizer(reader_tokenizer)
    if rate >= 1:
        check_inputs(question or " ", passages, method, None, None)
        n = n_tokens(tok, SEP.join(passages))
        r = None
        compressed, origin, comp = SEP.join(passages), n, n
    else:
        q = question
        if not question.strip():
            if method not in QUERY_AGNOSTIC:
                raise ConfigError(f"method {method!r} is question-aware: pass question=..., or use "
                                  f"method='selective-context' (query-agnostic)")  # fmt: skip
            q = "-"  # unused by query-agnostic scorers
        r = prune(q, passages, method=method, rate=1.0 - rate, reader_tokenizer=tok, **kw)
        compressed, origin, comp = r.text, r.tokens_before, r.tokens_after
    prompt = SEP.join(x for x in (instruction, compressed, question) if x)
    o = origin + (n_tokens(tok, instruction) if instruction else 0) + (n_tokens(tok, question) if question else 0)
    c = n_tokens(tok, prompt)
    return {
        "compressed_prompt": prompt, "origin_tokens": o, "compressed_tokens": c,
        "ratio": f"{o / max(c, 1):.1f}x", "rate": f"{100.0 * c / max(o, 1):.1f}%",
        "saving": f", Saving {o - c} tokens", "context_origin_tokens": origin, "context_compressed_tokens": comp,
        "result": r,
    }  # fmt: skip
