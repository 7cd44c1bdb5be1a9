"""Character spans over an unchanged string, and the streaming assembler that turns boundary
positions into spans in bounded memory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

_NONWS = re.compile(r"\S")


@dataclass(frozen=True)
class Span:
    """``text[start:end]`` is one unit (no leading or trailing whitespace); ``score`` is the
    confidence of the boundary that ends it (1.0 for the end of the text)."""

    start: int
    end: int
    score: float = 1.0

    def of(self, text: str) -> str:
        return text[self.start : self.end]

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "score": round(float(self.score), 6)}


def gaps(text: str, spans: list[Span]) -> list[tuple[int, int]]:
    """The ``(start, end)`` stretches between and around ``spans`` (all whitespace); spans and
    gaps in order tile ``text`` exactly."""
    out, pos = [], 0
    for s in spans:
        out.append((pos, s.start))
        pos = s.end
    out.append((pos, len(text)))
    return out


def reconstruct(text: str, spans: list[Span]) -> str:
    """Gap + span + gap + ... + gap: equals ``text`` whenever ``spans`` are a valid cover."""
    parts, pos = [], 0
    for s in spans:
        parts.append(text[pos : s.start])
        parts.append(text[s.start : s.end])
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)


class Assembler:
    """Feeds on the text region by region (``feed``) and on boundary positions (``boundary``), in
    increasing order, and yields ``Span``s stripped of whitespace. It keeps O(1) state: the
    first and last non-space positions of the unit being built."""

    def __init__(self) -> None:
        self._start: int | None = None  # first non-space of the current unit
        self._last: int | None = None  # end of its last non-space character

    def feed(self, buf: str, base: int, a: int, b: int) -> None:
        """``buf[a:b]`` (absolute offset ``base + a``) belongs to the current unit."""
        if a >= b:
            return
        if self._start is None:
            m = _NONWS.search(buf, a, b)
            if m is None:
                return
            self._start = base + m.start()
        j = b
        while j > a and buf[j - 1].isspace():
            j -= 1
        if j > a:
            self._last = base + j

    def boundary(self, score: float) -> Iterator[Span]:
        """A unit ends here (after everything fed so far)."""
        if self._start is not None and self._last is not None and self._last > self._start:
            yield Span(self._start, self._last, float(score))
        self._start = self._last = None

    def close(self) -> Iterator[Span]:
        yield from self.boundary(1.0)
