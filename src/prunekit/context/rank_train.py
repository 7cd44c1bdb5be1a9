"""``python -m prunekit.context.rank_train``: distil the IDCM student head (arXiv 2105.09816 §3.2)
from the expensive scorer's passage scores.

Data: SciFact **train** claims (``claims_train.csv``; the benchmark evaluates ``claims_validation.csv``,
never seen here). For each of ``--claims`` claims (a fixed shuffle, seed 0): its cited documents plus
``--negatives`` BM25 neighbours from the corpus; every passage (sentence windows) of them is scored by
the expensive scorer (query likelihood under ``--lm``). Loss: within each document, cross-entropy of
the student's passage distribution against the teacher's ``softmax(s_ETM / τ)`` — only the order
inside a document decides which top-k passages the expensive scorer reads.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import time
import tokenize
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "scifact"


def _sentences(cell: str) -> list[str]:
    """The abstract cell is a printed array of string literals; read them one literal at a time."""
    import ast

    out = []
    for t in tokenize.generate_tokens(io.StringIO(cell).readline):
        if t.type == tokenize.STRING:
            out.append(ast.literal_eval(t.string).strip())
    return [s for s in out if s]


def load_corpus(data: Path = DATA) -> dict[int, str]:
    csv.field_size_limit(sys.maxsize)
    docs = {}
    with open(data / "corpus_train.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            docs[int(r["doc_id"])] = (r["title"].strip() + " " + " ".join(_sentences(r["abstract"]))).strip()
    return docs


def load_claims(split: str, data: Path = DATA) -> list[tuple[int, str, set[int]]]:
    """``(id, claim, relevant doc ids)``; relevant = the claim's ``cited_doc_ids`` (merged over its rows)."""
    import re

    by: dict[int, tuple[str, set[int]]] = {}
    with open(data / f"claims_{split}.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            cid = int(r["id"])
            rel = {int(x) for x in re.findall(r"\d+", r["cited_doc_ids"])}
            c, s = by.setdefault(cid, (r["claim"], set()))
            s |= rel
    return [(cid, c, s) for cid, (c, s) in sorted(by.items()) if s]


class CorpusBM25:
    def __init__(self, docs: dict[int, str]) -> None:
        from rank_bm25 import BM25Okapi

        from .scorers import terms

        self.ids = list(docs)
        self.bm = BM25Okapi([terms(docs[i]) or ["\u0000"] for i in self.ids])

    def top(self, query: str, n: int) -> list[tuple[int, float]]:
        from .scorers import terms

        s = self.bm.get_scores(terms(query))
        idx = sorted(range(len(s)), key=lambda i: -s[i])[:n]
        return [(self.ids[i], float(s[i])) for i in idx]


def main(argv: list[str] | None = None) -> int:
    import torch

    from .rank import HEAD, QueryLikelihood, StudentHead, features, split_passages

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claims", type=int, default=40)
    ap.add_argument("--negatives", type=int, default=2)
    ap.add_argument("--lm", default="smollm2-135m")
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--out", default=str(HEAD))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    docs = load_corpus()
    claims = load_claims("train")
    random.Random(0).shuffle(claims)
    claims = claims[: a.claims]
    bm = CorpusBM25(docs)
    ql = QueryLikelihood(a.lm)
    groups: list[tuple[Any, Any]] = []  # per document: (features [n, 2], teacher [n])
    feats_all = []
    from tqdm import tqdm

    n_evals = 0
    for _, claim, rel in tqdm(claims, desc="teacher"):
        cand = list(rel)[:2] + [d for d, _ in bm.top(claim, 10) if d not in rel][: a.negatives]
        texts = [[docs[d][s.start : s.end] for s in split_passages(docs[d], a.window)] for d in cand if d in docs]
        flat = [t for ts in texts for t in ts]
        f = features(claim, flat)
        y = ql(claim, flat)
        n_evals += len(flat)
        i = 0
        for ts in texts:
            if len(ts) > 1:
                groups.append((torch.tensor(f[i : i + len(ts)]), torch.tensor(y[i : i + len(ts)])))
            i += len(ts)
        feats_all += f
    F = torch.tensor(feats_all)
    mu, sigma = F.mean(0), F.std(0).clamp_min(1e-6)
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(a.epochs):
        opt.zero_grad()
        loss = sum(-(torch.softmax(y / a.tau, 0) * torch.log_softmax(((f - mu) / sigma) @ w, 0)).sum() for f, y in groups)
        (loss / len(groups)).backward()
        opt.step()
    head = StudentHead(w.detach().tolist(), 0.0, mu.tolist(), sigma.tolist(), meta={
        "trained": "yes", "paper": "arXiv 2105.09816", "split": "scifact claims_train (benchmark: claims_validation)",
        "claims": str(len(claims)), "teacher": f"query likelihood {a.lm}", "window": str(a.window),
        "teacher_evals": str(n_evals), "documents": str(len(groups)), "loss": f"{float(loss.detach()) / len(groups):.4f}",
        "command": "python -m prunekit.context.rank_train " + " ".join(argv if argv is not None else sys.argv[1:]),
    })  # fmt: skip
    head.save(a.out)
    print(f"wrote {a.out}: w={head.w} mu={head.mu} sigma={head.sigma}; {n_evals} teacher evaluations, "
          f"{len(groups)} documents, {time.perf_counter() - t0:.0f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
