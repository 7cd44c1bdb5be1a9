"""Train the ``provence`` heads: ``python -m prunekit.context.train [--data xquad.en.json] [--out FILE]``.

Silver labels from the XQuAD **train half** (articles 0-23 in file order, ``Super_Bowl_50`` ...
``Victoria_and_Albert_Museum``; the benchmark reports on articles 24-47): for each question,
its gold paragraph with every token of the sentence(s) that contain a gold answer span labelled
keep (1) and the rest drop (0), passage label 1; and the best-BM25 other paragraph of the train
half, all tokens drop, passage label 0. The MiniLM body is frozen: its token states are computed
once, then the two heads are trained with binary cross-entropy (AdamW, a few epochs).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from .. import text as T
from .scorers import bm25_scores, terms

XQUAD = Path("/work/shared/data/xquad/xquad.en.json")
N_TRAIN_ARTICLES = 24


def load_xquad(path: str | Path = XQUAD) -> list[dict[str, Any]]:
    """Articles as ``{"title", "paragraphs": [{"context", "qas": [...]}]}`` (SQuAD v1.1 layout)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["data"]


def split(articles: list[dict], half: str) -> list[dict]:
    return articles[:N_TRAIN_ARTICLES] if half == "train" else articles[N_TRAIN_ARTICLES:]


def questions(articles: list[dict]) -> list[dict]:
    """Flat ``{"question", "answers", "starts", "context", "pid"}`` with ``pid`` the paragraph's index
    among ``paragraphs(articles)``."""
    out, pid = [], 0
    for a in articles:
        for p in a["paragraphs"]:
            for q in p["qas"]:
                out.append({"id": q["id"], "question": q["question"], "answers": [x["text"] for x in q["answers"]],
                            "starts": [x["answer_start"] for x in q["answers"]], "context": p["context"], "pid": pid})  # fmt: skip
            pid += 1
    return out


def paragraphs(articles: list[dict]) -> list[str]:
    return [p["context"] for a in articles for p in a["paragraphs"]]


def answer_units(context: str, starts: list[int], answers: list[str]) -> list[bool]:
    """Per sentence: does it overlap a gold answer span (the cheap silver label)."""
    units = T.sentences(context, method="rules")
    spans = [(s, s + len(t)) for s, t in zip(starts, answers)]
    return [any(a < u.end and b > u.start for a, b in spans) for u in units]


def build_examples(articles: list[dict], seed: int = 0) -> list[tuple[str, str, list[bool], int]]:
    paras = paragraphs(articles)
    docs = [terms(p) for p in paras]
    ex = []
    for q in questions(articles):
        lab = answer_units(q["context"], q["starts"], q["answers"])
        ex.append((q["question"], q["context"], lab, 1))
        s = bm25_scores(terms(q["question"]), docs)
        neg = max((i for i in range(len(paras)) if i != q["pid"]), key=lambda i: s[i])
        ex.append((q["question"], paras[neg], [False] * len(T.sentences(paras[neg], method="rules")), 0))
    random.Random(seed).shuffle(ex)
    return ex


def featurize(examples, progress: bool = True):
    """Frozen-body token states and labels: ``X [n_tok, d]``, ``y [n_tok]``, ``C [n_pairs, d]``, ``z``."""
    import torch
    from tqdm.auto import tqdm

    from .encoder import MiniLM
    from .provence import windows

    enc = MiniLM.load()
    X, y, C, z = [], [], [], []
    for q, c, lab, pos in tqdm(examples, desc="features", disable=not progress):
        units = T.sentences(c, method="rules")
        rows, cuts, off0, ids, offs = windows(enc, q, c, units)
        h, _ = enc.forward(rows)
        tl = torch.zeros(len(ids))
        j = 0
        for k, (a, _) in enumerate(offs):
            while j < len(units) and a >= units[j].end:
                j += 1
            if j < len(units) and units[j].start <= a and lab[j]:
                tl[k] = 1.0
        for r, (a, b) in enumerate(cuts):
            X.append(h[r, off0 : off0 + b - a].clone())
            y.append(tl[a:b])
        C.append(h[:, 0].mean(0).clone())
        z.append(float(pos))
    return torch.cat(X), torch.cat(y), torch.stack(C), torch.tensor(z)


def train(data: str | Path = XQUAD, out: str | Path | None = None, *, epochs: int = 8, lr: float = 2e-3,
          hidden: int = 128, seed: int = 0, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    import torch
    from safetensors.torch import save_file

    from .provence import HEAD, heads

    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    arts = split(load_xquad(data), "train")
    ex = build_examples(arts, seed)
    X, y, C, z = featurize(ex, progress)
    t_feat = time.perf_counter() - t0
    token, rerank = heads(X.shape[1], hidden)
    opt = torch.optim.AdamW(list(token.parameters()) + list(rerank.parameters()), lr=lr, weight_decay=0.01)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    n = X.shape[0]
    for ep in range(epochs):
        perm = torch.randperm(n)
        for b in range(0, n, 1024):
            idx = perm[b : b + 1024]
            loss = bce(token(X[idx])[:, 0], y[idx])
            cidx = torch.randint(0, C.shape[0], (64,))
            loss = loss + bce(rerank(C[cidx])[:, 0], z[cidx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        p = torch.sigmoid(token(X)[:, 0])
        acc = ((p > 0.1) == (y > 0.5)).float().mean().item()
        rec = ((p > 0.1) & (y > 0.5)).float().sum().item() / max(1.0, (y > 0.5).float().sum().item())
        keep = (p > 0.1).float().mean().item()
    meta = {"dim": X.shape[1], "hidden": hidden, "threshold": 0.1, "train_articles": [a["title"] for a in arts],
            "labels": "sentence containing a gold answer span (cheap silver); BM25 hard negative paragraph",
            "pairs": len(ex), "tokens": n, "epochs": epochs, "lr": lr, "seed": seed,
            "train_token_acc@0.1": round(acc, 4), "train_token_recall@0.1": round(rec, 4),
            "train_token_keep@0.1": round(keep, 4)}  # fmt: skip
    sd = {f"token.{k}": v.contiguous() for k, v in token.state_dict().items()}
    sd.update({f"rerank.{k}": v.contiguous() for k, v in rerank.state_dict().items()})
    path = Path(out) if out is not None else HEAD
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"prunekit": json.dumps(meta)})
    meta.update(out=str(path), feature_seconds=round(t_feat, 1), wall_seconds=round(time.perf_counter() - t0, 1),
                cpu_seconds=round(time.process_time() - c0, 1))  # fmt: skip
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m prunekit.context.train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(XQUAD), help="XQuAD English JSON (SQuAD v1.1 layout)")
    ap.add_argument("--out", default=None, help="head file (default: the packaged heads/provence-minilm.safetensors)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(train(a.data, a.out, epochs=a.epochs, seed=a.seed)))


if __name__ == "__main__":
    main()
