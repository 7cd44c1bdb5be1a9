"""Evaluation helpers shared by training and ``benchmarks/segmentation.py``: UD CoNLL-U documents
as running text with gold sentence ends, SaT-style corruptions, boundary P/R/F1, P_k and WindowDiff."""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

CORRUPTIONS = ("clean", "no-newlines", "lower", "no-punct", "all")


def read_conllu_docs(path) -> list[list[list[str]]]:
    """Documents → paragraphs → sentence texts (the ``# text =`` lines), in file order."""
    docs: list[list[list[str]]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# newdoc"):
                docs.append([])
            elif line.startswith("# newpar"):
                if not docs:
                    docs.append([])
                docs[-1].append([])
            elif line.startswith("# text = "):
                if not docs:
                    docs.append([])
                if not docs[-1]:
                    docs[-1].append([])
                docs[-1][-1].append(line[len("# text = "):].rstrip("\n"))
    return [[p for p in d if p] for d in docs if any(d)]


def strip_punct(s: str) -> str:
    """``s`` without punctuation characters (Unicode category P*), spaces collapsed."""
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("P"))
    return re.sub(r"[ \t]{2,}", " ", s).strip()


def corrupt_sentence(s: str, lower: bool, no_punct: bool, no_newlines: bool) -> str:
    if no_punct:
        s = strip_punct(s)
    if lower:
        s = s.lower()
    if no_newlines:
        s = re.sub(r"\s*\n\s*", " ", s)
    return s.strip()


def join_units(units: list[tuple[str, str]], lower: bool = False, no_punct: bool = False,
               no_newlines: bool = False) -> tuple[str, list[int]]:
    """``units`` = [(sentence, gap after it)]: the running text and the end offset of every
    sentence but the last (the gold boundaries), after the corruption."""
    parts, ends, pos = [], [], 0
    kept = [(corrupt_sentence(s, lower, no_punct, no_newlines), g) for s, g in units]
    kept = [(s, g) for s, g in kept if s]
    for i, (s, g) in enumerate(kept):
        parts.append(s)
        pos += len(s)
        if i + 1 < len(kept):
            ends.append(pos)
            if no_newlines and "\n" in g:
                g = " "
            g = g or " "
            parts.append(g)
            pos += len(g)
    return "".join(parts), ends


def corruption_flags(name: str) -> dict[str, bool]:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}")
    all_ = name == "all"
    return {"lower": all_ or name == "lower", "no_punct": all_ or name == "no-punct",
            "no_newlines": all_ or name == "no-newlines"}


def ud_documents(path, corruption: str = "clean") -> list[tuple[str, list[int]]]:
    """Each UD document as running text (sentences joined by a space, paragraphs by a newline)
    with its gold sentence ends, under ``corruption`` (one of ``CORRUPTIONS``)."""
    out = []
    for doc in read_conllu_docs(path):
        units = []
        for p in doc:
            for i, s in enumerate(p):
                units.append((s, " " if i + 1 < len(p) else "\n"))
        out.append(join_units(units, **corruption_flags(corruption)))
    return out


@dataclass
class PRF:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, pred: set[int], gold: set[int]) -> None:
        self.tp += len(pred & gold)
        self.fp += len(pred - gold)
        self.fn += len(gold - pred)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def span_ends(spans, text_len: int) -> set[int]:
    """Boundaries predicted by spans: every span end except one at the end of the text's content."""
    ends = [s.end for s in spans]
    return set(ends[:-1]) if ends else set()


def _labels(bounds: set[int], n_units: int) -> list[int]:
    """Segment id of each unit from boundaries given as 'a boundary after unit i'."""
    seg, out = 0, []
    for i in range(n_units):
        out.append(seg)
        if i in bounds:
            seg += 1
    return out


def pk(ref: set[int], hyp: set[int], n_units: int, k: int) -> float:
    """P_k (Beeferman et al.): the share of unit pairs k apart on whose same-segment status
    reference and hypothesis disagree. Boundaries are 'after unit i' indices."""
    r, h = _labels(ref, n_units), _labels(hyp, n_units)
    m = n_units - k
    if m <= 0:
        return 0.0
    return sum((r[i] == r[i + k]) != (h[i] == h[i + k]) for i in range(m)) / m


def windowdiff(ref: set[int], hyp: set[int], n_units: int, k: int) -> float:
    """WindowDiff (Pevzner & Hearst): the share of windows of k units whose boundary counts differ."""
    rb = [1 if i in ref else 0 for i in range(n_units)]
    hb = [1 if i in hyp else 0 for i in range(n_units)]
    m = n_units - k
    if m <= 0:
        return 0.0
    rs, hs = sum(rb[:k]), sum(hb[:k])
    bad = int(rs != hs)
    for i in range(1, m):
        rs += rb[i + k - 1] - rb[i - 1]
        hs += hb[i + k - 1] - hb[i - 1]
        bad += int(rs != hs)
    return bad / m


def random_boundaries(n_units: int, count: int, seed: int) -> set[int]:
    rng = random.Random(seed)
    return set(rng.sample(range(n_units - 1), min(count, max(0, n_units - 1))))
