"""``prunekit.prompts.search``: PromptQuine / ClaPS prompt search under an LM-call budget."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..search import evolve, greedy
from . import claps as CL
from . import promptquine as PQ
from .scorer import Scorer
from .tasks import Task, load_task

METHODS = ("promptquine", "claps-greedy", "claps-genetic", "claps")


@dataclass
class SearchConfig:
    k: int = 4  # PromptQuine: demonstrations in the start prompt
    population: int = 8
    survivors: int = 3
    clusters: int = 64  # ClaPS: k-means clusters of the input embeddings
    keep_fraction: float = 0.25  # ClaPS: probed representatives kept
    length: int = 4  # ClaPS: prompt tokens
    batch_size: int = 64


@dataclass
class SearchResult:
    method: str
    task: str
    seed: int
    prompt: str
    prompt_tokens: int
    dev_accuracy: float
    test_accuracy: float | None
    curve: list[list[float]]  # [LM calls so far, best full-dev accuracy]
    lm_calls: int
    cache_hits: int
    forwards: int
    tokens: int
    seconds: float
    mask: dict[str, Any] | None = None  # PromptQuine: {"original", "keep", "text"}
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Budgeted:
    """Fitness over candidates → prompt ids, that refuses (``inf``) once ``budget`` calls are spent
    and tracks the best full-dev accuracy against the call count."""

    def __init__(self, scorer: Scorer, budget: int, to_ids, split: str = "dev"):
        self.s, self.budget, self.to_ids, self.split = scorer, budget, to_ids, split
        self.n_full = len(scorer.queries[split])
        self.best_acc, self.curve = -1.0, []
        self._last, self._stalled = -1, 0

    def spent(self) -> bool:
        return self.s.calls >= self.budget

    def stop(self, patience: int = 20) -> bool:
        """Budget spent, or ``patience`` generations in a row without one new (uncached) call: every
        offspring drawn was already scored, so the neighbourhood is exhausted."""
        self._stalled = self._stalled + 1 if self.s.calls == self._last else 0
        self._last = self.s.calls
        return self.spent() or self._stalled >= patience

    def __call__(self, cand, n: int | None = None, record: bool = False) -> tuple[float, None]:
        ids = self.to_ids(cand)
        n = self.n_full if n is None else n
        if self.spent() and self.s.key(ids, self.split, min(n, self.n_full)) not in self.s.cache:
            return math.inf, None
        sc = self.s(ids, self.split, n)
        if n >= self.n_full and sc.accuracy > self.best_acc:
            self.best_acc = sc.accuracy
            self.curve.append([self.s.calls, sc.accuracy])
        return sc.fitness, None


def _check(task: Task, method: str, budget: int, cfg: SearchConfig) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown prompt-search method {method!r}; choose one of {', '.join(METHODS)}")
    if budget < 1:
        raise ConfigError(f"budget={budget}: give at least 1 LM call")
    if method == "promptquine" and not 1 <= cfg.k <= len(task.train):
        raise ConfigError(f"k={cfg.k} demonstrations but the train split has {len(task.train)} examples; "
                          f"use k from 1 to {len(task.train)}")  # fmt: skip
    if cfg.survivors > cfg.population or min(cfg.survivors, cfg.population, cfg.length, cfg.clusters) < 1:
        raise ConfigError("population, survivors, length and clusters must be >= 1, survivors <= population")


def search(model, tokenizer, task: Task | str, method: str = "promptquine", budget: int = 2000, seed: int = 13,
           config: SearchConfig | None = None, test: bool = True, progress: bool = False,
           scorer: Scorer | None = None) -> SearchResult:  # fmt: skip
    """Search a prompt for ``task`` with at most ``budget`` uncached LM calls (one call = one prompt
    on one split); returns the best prompt, its dev and test accuracy and the search curve.
    ``task`` is a :class:`Task` or a name (loaded with the 16-shot split of ``seed``)."""
    cfg = config or SearchConfig()
    if isinstance(task, str):
        task = load_task(task, seed)
    task.check()
    _check(task, method, budget, cfg)
    if method == "claps":
        method = "claps-greedy"
    t0 = time.perf_counter()
    model.eval()
    sc = scorer or Scorer(model, tokenizer, task, cfg.batch_size)
    rng = random.Random(seed)
    n_dev = len(task.dev)
    stages = [max(1, n_dev // 2), n_dev] if n_dev > 1 else [n_dev]
    surv = [cfg.survivors] if len(stages) > 1 else []
    mask = None
    extra: dict[str, Any] = {}
    if method == "promptquine":
        x = PQ.icl_prompt(task, cfg.k, rng, sc.encode)
        fit = _Budgeted(sc, budget, lambda z: [x[i] for i in z])
        res = evolve(tuple(range(len(x))), PQ.mutate, fit, stages=stages, survivors=surv,
                     population=cfg.population, generations=10**9, rng=rng, stop=fit.stop,
                     progress=progress, desc="promptquine")  # fmt: skip
        pp = PQ.PrunedPrompt(tuple(x), tuple(res.best))
        ids, mask = pp.ids, pp.to_dict(tokenizer)
        extra["start_tokens"] = len(x)
    else:
        E = model.get_input_embeddings().weight
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        allowed = torch.tensor([i not in special for i in range(E.shape[0])])
        labels = CL.kmeans(E, min(cfg.clusters, int(allowed.sum())), seed)
        reps = CL.representatives(E, labels, allowed)
        probe = _Budgeted(sc, budget, lambda z: list(z), split="train")
        base = probe(())[0]
        infl = []
        for t in reps:
            if probe.spent():
                break
            infl.append((probe((t,))[0] - base, t))
        infl.sort()
        vocab = [t for _, t in infl[: max(1, round(cfg.keep_fraction * len(infl)))]]
        extra.update(clusters=len(reps), probed=len(infl), pruned_vocab=len(vocab))
        fit = _Budgeted(sc, budget, lambda z: list(z))
        if method == "claps-greedy":
            cur: tuple[int, ...] = ()
            for _ in range(cfg.length):
                if fit.spent():
                    break
                r = greedy(cur, lambda z: [(*z, t) for t in vocab], lambda z: fit(z)[0], rounds=1, stop=fit.spent)
                if r.best == cur:
                    break
                cur = r.best
            ids = list(cur)
        else:
            start = tuple(rng.choice(vocab) for _ in range(cfg.length))
            res = evolve(start, CL.mutate_one(vocab), fit, stages=stages, survivors=surv,
                         population=cfg.population, generations=10**9, rng=rng, stop=fit.stop,
                         progress=progress, desc="claps")  # fmt: skip
            ids = list(res.best)
    extra["search_calls"] = sc.calls
    dev = sc(ids, "dev")
    test_acc = sc(ids, "test").accuracy if test and task.test else None
    return SearchResult(method, task.name, seed, tokenizer.decode(ids), len(ids), dev.accuracy, test_acc,
                        fit.curve, sc.calls, sc.hits, sc.forwards, sc.tokens, time.perf_counter() - t0,
                        mask, extra)  # fmt: skip
