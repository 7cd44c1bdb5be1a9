"""``provence``: context pruning as sequence labelling (Chirkova et al., arXiv 2501.16214).

A cross-encoder reads ``[CLS] q [SEP] c [SEP]``; a token head gives each context token a keep
probability ``p_t = σ(h(e_t))``; a rerank head gives the passage score ``σ(r(e_[CLS]))``. A
sentence ``s`` survives when ``mean_{t∈s} p_t > T`` (T = 0.1), so the amount pruned adapts to each
context; ``rate=`` forces a budget instead (the scores then only rank the sentences).

Here the body is all-MiniLM-L6-v2 (frozen, from its PyPI package) and the two heads are small
and trained in this package on silver labels from the XQuAD train-half articles
(``python -m prunekit.context.train``); they ship in ``heads/provence-minilm.safetensors``.
A passage longer than the encoder's window is cut into chunks at sentence boundaries (counted in
the result's ``chunks``), never truncated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from ..text.spans import Span
from .encoder import MAX_LEN, MiniLM
from .scorers import Scores

HEAD = Path(__file__).resolve().parent / "heads" / "provence-minilm.safetensors"
DEFAULT_THRESHOLD = 0.1
MAX_QUESTION = 128  # encoder tokens


def heads(dim: int = 384, hidden: int = 128):
    """The token keep/drop head ``h`` (MLP) and the passage rerank head ``r`` (linear)."""
    import torch.nn as nn

    token = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
    rerank = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
    return token, rerank


def windows(enc: MiniLM, question: str, passage: str, units: list[Span]):
    """``[CLS] q [SEP] chunk [SEP]`` rows for ``passage``; chunks end at unit boundaries and fit
    ``MAX_LEN`` (a single unit longer than that is split at token positions). Returns the rows,
    per row the (start, end) of its passage tokens in ``ids``, the passage ids and offsets."""
    q = enc.ids(question)[0]
    if len(q) > MAX_QUESTION:
        raise DataError(f"the question has {len(q)} encoder tokens (limit {MAX_QUESTION}): shorten it")
    ids, offs = enc.ids(passage)
    room = MAX_LEN - len(q) - 3
    cls, sep = enc.tok.cls_token_id, enc.tok.sep_token_id
    # token index where each unit ends
    ends, j = [], 0
    for u in units:
        while j < len(ids) and offs[j][0] < u.end:
            j += 1
        ends.append(j)
    cuts = []
    start = 0
    prev_end = 0
    for e in ends + [len(ids)]:
        if e - start <= room:
            prev_end = e
            continue
        if prev_end > start:
            cuts.append((start, prev_end))
            start = prev_end
        while e - start > room:  # one unit longer than the window
            cuts.append((start, start + room))
            start += room
        prev_end = e
    if prev_end > start or not cuts:
        cuts.append((start, max(prev_end, len(ids))))
    rows = [[cls] + q + [sep] + ids[a:b] + [sep] for a, b in cuts]
    return rows, cuts, len(q) + 2, ids, offs


class ProvenceScorer:
    def __init__(self, token: Any, rerank: Any, meta: dict) -> None:
        self.enc = MiniLM.load()
        self.token, self.rerank, self.meta = token.eval(), rerank.eval(), meta

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ProvenceScorer":
        p = Path(path) if path is not None else HEAD
        if not p.is_file():
            raise ConfigError(f"provence head {p} is missing: train it with `python -m prunekit.context.train`")
        from safetensors.torch import load_file
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("prunekit", "{}"))
        sd = load_file(str(p))
        token, rerank = heads(int(meta.get("dim", 384)), int(meta.get("hidden", 128)))
        token.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("token.")})
        rerank.load_state_dict({k[7:]: v for k, v in sd.items() if k.startswith("rerank.")})
        return cls(token, rerank, meta)

    def token_probs(self, question: str, passage: str, units: list[Span]):
        """Per passage token keep probability, the passage score, offsets, and the chunk count."""
        import torch

        rows, cuts, off0, ids, offs = windows(self.enc, question, passage, units)
        h, _ = self.enc.forward(rows)
        probs = torch.zeros(len(ids))
        with torch.inference_mode():
            for k, (a, b) in enumerate(cuts):
                if b > a:
                    probs[a:b] = torch.sigmoid(self.token(h[k, off0 : off0 + b - a]))[:, 0]
            ps = torch.sigmoid(self.rerank(h[:, 0]))[:, 0].max().item()
        return probs, ps, offs, len(cuts)

    def score(self, question: str, passages: Sequence[str], units: list[list[Span]]) -> Scores:
        out, pss, extra = [], [], 0
        for p, us in zip(passages, units):
            if not us:
                out.append([])
                pss.append(0.0)
                continue
            probs, ps, offs, n = self.token_probs(question, p, us)
            extra += n - 1
            out.append(unit_means(probs.tolist(), offs, us))
            pss.append(ps)
        notes = [f"{extra} extra encoder window(s): passages longer than 512 tokens were chunked at sentence "
                 f"boundaries"] if extra else []  # fmt: skip
        return Scores(out, pss, chunks=extra, notes=notes)


def unit_means(probs: list[float], offs: list[tuple[int, int]], units: list[Span]) -> list[float]:
    """Mean token value per unit (a token belongs to the unit its first character is in)."""
    tot = [0.0] * len(units)
    cnt = [0] * len(units)
    j = 0
    for v, (a, _) in zip(probs, offs):
        while j < len(units) and a >= units[j].end:
            j += 1
        if j < len(units) and units[j].start <= a:
            tot[j] += v
            cnt[j] += 1
    return [t / c if c else 0.0 for t, c in zip(tot, cnt)]
