"""Text units as character spans over the unchanged string: sentences (``rules`` or the trained
``sat`` boundary classifier) and topic blocks (``pairs`` same-topic classifier or ``tiling``).

::

    import prunekit as pk
    spans = pk.text.sentences(text)                     # method="auto": sat if installed, else rules
    [s.of(text) for s in spans]                         # the sentences, sliced from text
    blocks = pk.text.topics(text, method="pairs")       # topic blocks over paragraphs
    for s in pk.text.iter_sentences(pk.text.iter_blocks("big.txt"), "rules"):
        ...                                             # any size, bounded memory

Every span is ``Span(start, end, score)``: ``text[start:end]`` without surrounding whitespace and
``score`` the confidence of the boundary that ends it. Spans never overlap, are in order, and
spans plus the whitespace gaps between them give back the text exactly.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..errors import ConfigError
from .io import iter_blocks, read_text
from .spans import Span, gaps, reconstruct

SENTENCE_METHODS = ("auto", "rules", "sat")
TOPIC_METHODS = ("pairs", "tiling")
INSTALL_HINT = "pip install 'prunekit[text]'"

__all__ = ["Span", "sentences", "iter_sentences", "topics", "gaps", "reconstruct", "resolve_method", "iter_blocks", "read_text",
           "SENTENCE_METHODS", "TOPIC_METHODS", "INSTALL_HINT"]


def _unknown(kind: str, method: str, known: tuple[str, ...]) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(str(method), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} method {method!r}: use one of {', '.join(known)}{hint}")


def resolve_method(method: str = "auto") -> str:
    """``auto`` is ``sat`` when its encoder package is installed (the head ships with prunekit),
    else ``rules``; an explicit method is checked and returned."""
    if method not in SENTENCE_METHODS:
        raise _unknown("sentence", method, SENTENCE_METHODS)
    if method != "auto":
        return method
    from .sat import available

    return "sat" if available() else "rules"


def iter_sentences(blocks: Iterable[str], method: str = "auto", *, threshold: float | None = None,
                   progress: bool = False, total: int | None = None) -> Iterator[Span]:
    """Sentence spans over the concatenation of ``blocks`` (e.g. ``prunekit.text.io.iter_blocks``),
    streamed in bounded memory; offsets are absolute."""
    m = resolve_method(method)
    blocks = _progress(blocks, progress, total)
    if m == "rules":
        if threshold is not None:
            raise ConfigError("threshold applies to method 'sat' only (rules boundaries are not thresholded)")
        from .rules import iter_spans

        return iter_spans(blocks)
    from .sat import SatSegmenter

    return SatSegmenter.load().iter_spans(blocks, threshold=threshold)


def sentences(text: str, method: str = "auto", *, threshold: float | None = None) -> list[Span]:
    """Sentence spans of ``text``; ``[]`` for empty or whitespace-only text."""
    if not isinstance(text, str):
        raise ConfigError(f"sentences() takes a str, got {type(text).__name__}")
    m = resolve_method(method)
    if not text.strip():
        return []
    step = 1 << 16  # blocks, so that the stream never re-slices one huge string
    return list(iter_sentences((text[i : i + step] for i in range(0, len(text), step)), m, threshold=threshold))


def topics(text: str, method: str = "pairs", *, threshold: float | None = None, k: int | None = None,
           progress: bool = False) -> list[Span]:
    """Topic blocks of ``text``: consecutive paragraphs (non-blank lines; the sentences when the
    text has a single paragraph) grouped where the method puts a topic change. ``pairs``: the
    trained same-topic classifier on consecutive paragraphs; ``tiling``: TextTiling-style depth
    scores of embedding similarity. ``k`` asks for the ``k`` most likely boundaries instead of a
    threshold."""
    if method not in TOPIC_METHODS:
        raise _unknown("topic", method, TOPIC_METHODS)
    if not isinstance(text, str):
        raise ConfigError(f"topics() takes a str, got {type(text).__name__}")
    if not text.strip():
        return []
    from .topicseg import segment

    return segment(text, method, threshold=threshold, k=k, progress=progress)


def _progress(blocks: Iterable[str], on: bool, total: int | None) -> Iterable[str]:
    if not on:
        return blocks
    from tqdm.auto import tqdm

    def gen():
        with tqdm(total=total, unit="char", unit_scale=True, desc="segment", leave=False) as bar:
            for b in blocks:
                yield b
                bar.update(len(b))

    return gen()
