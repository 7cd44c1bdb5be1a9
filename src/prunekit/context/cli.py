"""``prunekit context prune --question Q --passages FILE.jsonl [--method M] [--rate R|--threshold T] [--reader MODEL] --json``
and ``prunekit context rank --question Q --passages DOCS.jsonl [--select idcm|all|bm25|minilm] [--k 4] [--lm MODEL] --json``
(IDCM: each line of DOCS.jsonl is one document).

``FILE.jsonl``: one passage per line, a JSON string or an object with ``text``; any other file is
read as plain text with passages separated by blank lines. Tokens are counted with the reader's
tokenizer (only the tokenizer is loaded).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..cli.flags import float_flag, int_flag
from ..errors import ConfigError, DataError


def _rate(text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.5 to remove half the tokens)") from None
    if not (math.isfinite(v) and 0 < v < 1):
        raise argparse.ArgumentTypeError(f"{text} is out of range: it must be a fraction in (0, 1) of reader tokens to remove")
    return v


def register(subparsers: Any) -> argparse.ArgumentParser:
    from . import METHODS

    p = subparsers.add_parser("context", help="prune retrieved passages for a question (kept character spans)")
    p.add_argument("action", choices=("prune", "rank"),
                   help="prune: keep the sentences the reader needs; rank: IDCM cascade ranking of documents (--passages = documents)")
    p.add_argument("--question", "-q", required=True, help="the question the passages should answer")
    p.add_argument("--passages", required=True, metavar="FILE.jsonl",
                   help="one passage per line (a JSON string or {\"text\": ...}); a non-.jsonl file: passages split at blank lines")
    p.add_argument("--method", "-m", default="provence", help=f"{' | '.join(METHODS)} (default provence)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=_rate, default=None, help="fraction of reader tokens to remove, in (0, 1) (default 0.5; provence: its threshold)")
    g.add_argument("--threshold", type=float_flag(0, 1, lo_open=False), default=None,
                   help="provence/similarity: keep a sentence when its score > T (provence default 0.1)")
    p.add_argument("--reader", default="smollm2-135m", metavar="MODEL", help="the reader whose tokenizer counts tokens (default smollm2-135m)")
    p.add_argument("--lm", default=None, metavar="MODEL",
                   help="selective-context: the causal LM; rank: the expensive query-likelihood LM (default: --reader)")
    p.add_argument("--select", default="idcm", help="rank: idcm | all | bm25 | minilm (passages the expensive LM reads; default idcm)")
    p.add_argument("--k", type=int_flag(1, 10**6), default=4, help="rank: passages per document the expensive LM reads (default 4)")
    p.add_argument("--window", type=int_flag(1, 1000), default=2, help="rank: sentences per passage (default 2)")
    p.add_argument("--seed", type=int_flag(0, 2**63 - 1), default=0, help="random: the seed (default 0)")
    p.add_argument("--json", action="store_true", help="print a JSON summary (kept spans, scores, tokens) as the last line")
    p.add_argument("--quiet", action="store_true", help="print nothing but the --json line")
    p.set_defaults(_handler=cmd_context)
    return p


def read_passages(path: str) -> list[str]:
    f = Path(path)
    if not f.is_file():
        raise DataError(f"--passages {path} does not exist")
    raw = f.read_text(encoding="utf-8", errors="replace")
    if f.suffix.lower() not in (".jsonl", ".json"):
        out = [b.strip("\n") for b in raw.split("\n\n") if b.strip()]
        if not out:
            raise DataError(f"--passages {path} holds no text")
        return out
    from ..data.sources import json_lines

    out = []
    for n, rec in json_lines(f):
        if isinstance(rec, dict):
            if "text" not in rec:
                raise DataError(f"--passages {path}: line {n} has no 'text' field")
            rec = rec["text"]
        if not isinstance(rec, str):
            raise DataError(f"--passages {path}: line {n} is not a string or an object with a string 'text'")
        out.append(rec)
    if not out:
        raise DataError(f"--passages {path} holds no passages")
    return out


def cmd_rank(a: argparse.Namespace) -> dict[str, Any]:
    from .rank import check_rank_inputs, rank

    docs = read_passages(a.passages)
    check_rank_inputs(a.question, docs, a.select, a.k)  # before any model is loaded
    r = rank(a.question, docs, select=a.select, k=a.k, lm=a.lm or a.reader, window=a.window)
    if not (a.json or a.quiet):
        for n, d in enumerate(r.order[:10]):
            print(f"{n + 1:>3}  doc {d}  {r.scores[d]:.4f}  {docs[d][:70]!r}")
        print(f"-- {a.select} k={a.k}: {r.expensive_evals}/{r.passages_total} passages to the expensive LM "
              f"({r.evals_saved} saved), {r.student_evals} student evaluations, {r.seconds:.2f}s")  # fmt: skip
    return {"question": a.question, "documents": len(docs), "lm": a.lm or a.reader, **r.to_dict()}


def cmd_context(a: argparse.Namespace) -> dict[str, Any]:
    from . import prune
    from .core import check_inputs

    if a.action == "rank":
        return cmd_rank(a)
    passages = read_passages(a.passages)
    check_inputs(a.question, passages, a.method, a.rate, a.threshold)  # before any model is loaded
    if a.lm is not None and a.method != "selective-context":
        raise ConfigError("--lm applies to --method selective-context only")
    r = prune(a.question, passages, method=a.method, rate=a.rate, threshold=a.threshold, reader_tokenizer=a.reader,
              seed=a.seed, lm=a.lm or a.reader)  # fmt: skip
    if not (a.json or a.quiet):
        print(r.text)
        print(f"-- {a.method}: kept {r.units_kept}/{sum(len(u) for u in r.units)} sentences, {r.tokens_after}/"
              f"{r.tokens_before} reader tokens ({100 * r.achieved_rate:.1f}% removed), {r.seconds:.2f}s")  # fmt: skip
        for n in r.notes:
            print(f"-- note: {n}")
    return {"question": a.question, "passages": len(passages), "reader": a.reader, **r.to_dict()}
