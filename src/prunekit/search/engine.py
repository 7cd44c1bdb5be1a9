"""Elitist staged evolutionary search and greedy search over opaque candidates.

The evolutionary loop is Týr-the-Pruner's (Li et al., arXiv:2503.09657, Alg. 1), kept exact so
Týr's results do not change:

1. ``f* = F(x₀, n_K)``; parent ``x = x₀``.
2. Each generation: up to ``population`` distinct offspring ``mutate(x, rng)`` (``None`` = no
   move; at most ``20·population`` draws).
3. Stages ``n_1 < … < n_K``: score the pool on ``n_k`` and keep the best ``s_k`` (stable sort,
   ties keep the earlier), for ``k < K``; the survivors are scored on ``n_K`` and the first one
   better than the running best ``f*`` (strictly) becomes the parent (elitism: else ``x`` stays).
4. The curve records ``f*`` after every generation (lower is better).

The fitness callback ``F(candidate, n, record) -> (score, payload)``: ``n`` is the stage size,
``record`` is set on the final stage, and the winner's payload goes to ``on_parent(x, payload)``
(Týr keeps the winner's hidden states there). Maximising callers return ``-score``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

Fitness = Callable[[Any, int, bool], "tuple[float, Any]"]


@dataclass
class EvolveResult:
    best: Any
    score: float
    curve: list[float] = field(default_factory=list)
    generations: int = 0


def offspring(parent: Hashable, mutate: Callable[[Any, random.Random], Any], population: int,
              rng: random.Random) -> list:  # fmt: skip
    """Up to ``population`` distinct children of ``parent`` (``20·population`` draws at most)."""
    kids: list = []
    for _ in range(20 * population):
        if len(kids) == population:
            break
        child = mutate(parent, rng)
        if child is not None and child not in kids:
            kids.append(child)
    return kids


def evolve(start: Any, mutate: Callable[[Any, random.Random], Any], fitness: Fitness, *,
           stages: Sequence[int], survivors: Sequence[int], population: int, generations: int,
           rng: random.Random, on_parent: Callable[[Any, Any], None] | None = None,
           stop: Callable[[], bool] | None = None, progress: bool = False,
           desc: str = "search") -> EvolveResult:  # fmt: skip
    """Elitist staged evolution (module docstring); ``stop()`` true ends it early (e.g. a budget)."""
    if len(survivors) != len(stages) - 1:
        raise ValueError("survivors needs one value per stage before the last")
    final = stages[-1]
    best = fitness(start, final, False)[0]
    curve = [best]
    parent = start
    gens: Any = range(generations)
    if progress:
        from tqdm.auto import tqdm

        gens = tqdm(gens, desc=desc, unit="gen", dynamic_ncols=True)
    done = 0
    for _ in gens:
        if stop is not None and stop():
            break
        pool = offspring(parent, mutate, population, rng)
        if not pool:
            break
        for n, keep in zip(stages[:-1], survivors):
            scores = [fitness(c, n, False)[0] for c in pool]
            pool = [pool[i] for i in sorted(range(len(pool)), key=scores.__getitem__)[:keep]]
        winner, payload = parent, None
        for c in pool:
            f, p = fitness(c, final, True)
            if f < best:
                best, winner, payload = f, c, p
        if winner is not parent:
            if on_parent is not None:
                on_parent(winner, payload)
            parent = winner
        curve.append(best)
        done += 1
    return EvolveResult(parent, best, curve, done)


def greedy(start: Any, neighbours: Callable[[Any], Sequence[Any]], score: Callable[[Any], float], *,
           rounds: int, stop: Callable[[], bool] | None = None) -> EvolveResult:  # fmt: skip
    """Steepest-descent: each round scores every neighbour of the current point and moves to the
    best one if it is strictly lower; ends at a local minimum, after ``rounds``, or on ``stop()``."""
    cur, best = start, score(start)
    curve = [best]
    done = 0
    for _ in range(rounds):
        moved = False
        for c in neighbours(cur):
            if stop is not None and stop():
                break
            f = score(c)
            if f < best:
                best, cand, moved = f, c, True
        if not moved:
            break
        cur = cand
        curve.append(best)
        done += 1
    return EvolveResult(cur, best, curve, done)
