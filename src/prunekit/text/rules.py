"""``rules``: a fast pure-Python sentence splitter (abbreviations, initials, decimals, quotes,
lists, ellipses, line structure). It streams: ``iter_spans(blocks)`` keeps only a few hundred
characters of context besides the current block."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from .spans import Assembler, Span

# Titles and abbreviations that (almost) never end a sentence: "Dr. Smith", "e.g. apples", "No. 5".
NEVER_END = frozenset("""
mr mrs ms mx dr prof st mt rev fr gen sen rep gov pres capt cpt lt col sgt maj cmdr adm hon
fig figs vs v e.g eg i.e ie cf approx appx no nos vol vols pp ch chap sec sect art para ref refs
dept univ assn bros ft est ext tel jan feb mar apr jun jul aug sep sept oct nov dec
ave blvd rd mon tue tues wed thu thur thurs fri sat sun min max viz ca op ed eds trans al
""".split())
# Abbreviations that may end a sentence: split only when a common sentence opener follows.
MAYBE_END = frozenset("etc inc ltd co corp llc plc jr sr esq a.m p.m am pm u.s u.k u.s.a e.u ph.d".split())
STARTERS = frozenset("""
the a an i we you he she it they this that these those there here in on at for but and or so
if when while after before as my our your his her its their what who how why where then however
also please yes no all some many most one two please thanks thank now today our
""".split())

_CLOSERS = ")]}\"'\u201d\u2019\u00bb"
_OPENERS = "([{\"'\u201c\u2018\u00ab"
# A cluster of terminal punctuation plus closing quotes/brackets followed by space or end, or a newline.
_CAND = re.compile(r"(?P<p>[.!?\u203d\u2026]+[)\]}\"'\u201d\u2019\u00bb]*)(?=\s|$)|(?P<nl>\n)")
_WS_CHARS = " \t\r\f\v\u00a0\u2028\u2029\u3000"
LOOK = 256  # characters of lookahead a decision may read
CTX = 128  # characters of lookbehind a decision may read
WRAP_MIN, WRAP_MAX = 40, 100  # line widths of hard-wrapped text
BLOCK = 1 << 16


def _next_nonspace(buf: str, j: int) -> tuple[int, str]:
    n = len(buf)
    lim = min(n, j + LOOK)
    while j < lim and buf[j].isspace():
        j += 1
    return j, (buf[j] if j < n and j < lim else "")


def _prev_word(buf: str, i: int, lo: int) -> tuple[int, str]:
    """Start and text of the whitespace-delimited word ending at ``i``."""
    j = i
    lim = max(lo, i - CTX)
    while j > lim and not buf[j - 1].isspace():
        j -= 1
    return j, buf[j:i]


def _line_start(buf: str, j: int, lo: int) -> bool:
    """Only blanks between the previous newline (or the text start) and ``j``."""
    k = j
    lim = max(lo, j - CTX)
    while k > lim and buf[k - 1] in _WS_CHARS:
        k -= 1
    return k == 0 or k == lim or buf[k - 1] == "\n"


def _decide_punct(buf: str, i: int, end: int, lo: int) -> float | None:
    """Score of a boundary after the punctuation cluster ``buf[i:end]``, or None for no boundary."""
    cluster = buf[i:end].rstrip(_CLOSERS)
    j, nx = _next_nonspace(buf, end)
    if nx == "":
        return 1.0 if j >= len(buf) else None  # end of text; a long blank run is decided by newlines
    k = j
    while k < len(buf) and k < j + 4 and buf[k] in _OPENERS:
        k += 1
    first = buf[k] if k < len(buf) else ""
    nword = _word_at(buf, k)
    if first.islower():
        # "e.g. apples", "... and then", '"Stop!" he said' go on; "wifi? i want" ends (web text
        # often starts a sentence in lower case): only before a common sentence opener
        if cluster != buf[i:end] or ".." in cluster or "\u2026" in cluster:
            return None  # a quotation ('"Stop!" he said') or an ellipsis goes on
        if "!" in cluster or "?" in cluster:
            return 0.6
        ws, word = _prev_word(buf, i, lo)
        core = word.lstrip(_OPENERS).lower()
        if len(core) >= 2 and core.isalpha() and core not in NEVER_END and core not in MAYBE_END:
            return 0.6 if nword in STARTERS else 0.5
        return None
    if "!" in cluster or "?" in cluster or "\u203d" in cluster:
        return 1.0
    if cluster != "." and ("\u2026" in cluster or ".." in cluster):  # ellipsis before a capital
        return 0.8 if (first.isupper() or first in "\"'\u201c") else None
    ws, word = _prev_word(buf, i, lo)
    core = word.lstrip(_OPENERS).lower()
    if not core:
        return 0.5
    if core.isdigit() and len(core) <= 3 and (_line_start(buf, ws, lo) or buf[max(lo, ws - 2) : ws].strip() in (":", ";")):
        return None  # a list marker "1." at a line start or after a colon
    if len(core) <= 2 and core.replace("(", "").isalpha() and len(core.replace("(", "")) == 1 and word[-1:] != "." and _line_start(buf, ws, lo):
        return None  # "a." list item at a line start
    if core in NEVER_END:
        return None
    if core in MAYBE_END or re.fullmatch(r"(?:[a-z]\.)+[a-z]", core):
        return 0.7 if nword.lower() in STARTERS else None
    if len(core) == 1 and core.isalpha():
        return None if first.isupper() else 0.6  # an initial: "J. Smith"
    return 1.0


def _word_at(buf: str, k: int) -> str:
    e = k
    lim = min(len(buf), k + 40)
    while e < lim and buf[e].isalpha():
        e += 1
    return buf[k:e]


def _decide_newline(buf: str, i: int, lo: int) -> float | None:
    """A line break ends a unit unless it is a hard wrap inside a sentence (the next line goes
    on in lower case and the line before does not end a clause)."""
    j, nx = _next_nonspace(buf, i + 1)
    if nx == "" or "\n" in buf[i + 1 : j]:
        return 1.0  # blank line: a paragraph break
    p = i
    lim = max(lo, i - CTX)
    while p > lim and buf[p - 1] in _WS_CHARS:
        p -= 1
    prev = buf[p - 1] if p > lo else ""
    if nx.islower() and (prev.isalnum() or prev in ",-"):
        # a hard wrap goes on: the line before is of a typical wrap width (40-100 characters)
        k = buf.rfind("\n", max(lo, i - WRAP_MAX - 1), i)
        width = i - (k + 1) if k >= 0 else (i if i - lo <= WRAP_MAX else WRAP_MAX + 1)
        if WRAP_MIN <= width <= WRAP_MAX:
            return None
    return 0.9


def boundaries(buf: str, lo: int, hi: int) -> Iterator[tuple[int, float, int]]:
    """``(position, score, match_end)`` of the boundaries whose candidate starts in ``[lo, hi)``;
    the position is just after the unit's last character (punctuation and closers included)."""
    for m in _CAND.finditer(buf, lo):
        i = m.start()
        if i >= hi:
            return
        if m.group("nl") is not None:
            s = _decide_newline(buf, i, 0)
            if s is not None:
                yield i, s, m.end()
        else:
            s = _decide_punct(buf, i, m.end(), 0)
            if s is not None:
                yield m.end(), s, m.end()


def iter_spans(blocks: Iterable[str]) -> Iterator[Span]:
    """Sentence spans (absolute offsets) over the concatenation of ``blocks``, in bounded memory."""
    asm = Assembler()
    buf, base, done = "", 0, 0  # done: buffer index up to which the text was assigned to units
    scan = 0  # buffer index from which to look for the next candidate
    it = iter(blocks)
    final = False
    while not final:
        block = next(it, None)
        if block is None:
            final = True
        else:
            if not block:
                continue
            cut = max(0, min(done, scan) - CTX)
            if cut:
                buf, base, done, scan = buf[cut:], base + cut, done - cut, scan - cut
            buf += block
        hi = len(buf) if final else len(buf) - LOOK
        if hi <= scan:
            continue
        last_end = scan
        for pos, score, mend in boundaries(buf, scan, hi):
            if pos < done:
                continue
            asm.feed(buf, base, done, pos)
            yield from asm.boundary(score)
            done = pos
            last_end = max(last_end, mend)
        stop = max(hi, last_end)
        if stop > done:
            asm.feed(buf, base, done, stop)
            done = stop
        scan = stop
    yield from asm.close()


def sentences(text: str) -> list[Span]:
    return list(iter_spans([text]))
