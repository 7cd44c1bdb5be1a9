"""prunekit.search: the engine with Týr's plug-ins equals the pre-extraction loop (re-implemented
here) on a toy fitness; greedy; offspring dedup."""

import random

from prunekit.search import evolve, greedy, offspring
from prunekit.structured.tyr import Space, mutate


def _old_loop(space, start, stages, survivors, population, generations, fit, rng):
    """Týr's search loop as it was before prunekit.search (structured/tyr.py at 3935889)."""
    final = stages[-1]
    best, curve = fit(start, final), []
    curve.append(best)
    parent = start
    for _ in range(generations):
        kids = []
        for _a in range(20 * population):
            if len(kids) == population:
                break
            child = mutate(parent, space, rng)
            if child is not None and child not in kids:
                kids.append(child)
        if not kids:
            break
        pool = kids
        for n, keep in zip(stages[:-1], survivors):
            scores = [fit(c, n) for c in pool]
            pool = [pool[i] for i in sorted(range(len(pool)), key=scores.__getitem__)[:keep]]
        winner = parent
        for c in pool:
            f = fit(c, final)
            if f < best:
                best, winner = f, c
        parent = winner
        curve.append(best)
    return parent, curve


def _toy(cfg, n):
    # a noisy staged fitness: the stage size changes the ranking, so survivors matter
    return sum(((q * 7 + c * 3 + b) % 11) * (1 + (n % 3) * (b % 2)) for b, (q, c) in enumerate(cfg)) / n


def test_engine_matches_old_tyr_loop():
    space = Space(attn=[[2, 3, 4]] * 5, mlp=[[40, 60, 80, 100, 120]] * 5)
    start = tuple((3, 80) for _ in range(5))
    for seed in range(6):
        for stages, surv in (([4], []), ([1, 4], [2]), ([1, 2, 8], [4, 2])):
            ref = _old_loop(space, start, stages, surv, 6, 12, _toy, random.Random(seed))
            parents = []
            got = evolve(start, lambda x, r: mutate(x, space, r), lambda c, n, rec: (_toy(c, n), c),
                         stages=stages, survivors=surv, population=6, generations=12, rng=random.Random(seed),
                         on_parent=lambda x, p: parents.append((x, p)))
            assert (got.best, got.curve) == ref
            assert all(x == p for x, p in parents) and (not parents or parents[-1][0] == got.best)
            assert got.curve == sorted(got.curve, reverse=True)  # elitist: never worse


def test_evolve_stop_and_no_moves():
    space = Space(attn=[[4]] * 3, mlp=[[10]] * 3)  # no block can move
    start = tuple((4, 10) for _ in range(3))
    res = evolve(start, lambda x, r: mutate(x, space, r), lambda c, n, rec: (1.0, None), stages=[1],
                 survivors=[], population=4, generations=5, rng=random.Random(0))
    assert res.best == start and res.curve == [1.0] and res.generations == 0
    calls = []
    res = evolve(0, lambda x, r: x + r.choice([-1, 1]), lambda c, n, rec: (calls.append(c) or abs(c - 9), None),
                 stages=[1], survivors=[], population=2, generations=50, rng=random.Random(0),
                 stop=lambda: len(calls) >= 7)
    assert len(calls) <= 7 + 2 and res.generations < 50


def test_offspring_distinct_and_bounded():
    kids = offspring(0, lambda x, r: r.randint(0, 2), 10, random.Random(1))
    assert sorted(kids) == [0, 1, 2]  # only 3 distinct values exist; 200 draws at most
    assert offspring(0, lambda x, r: None, 3, random.Random(1)) == []


def test_greedy_descends_to_minimum():
    res = greedy(0, lambda x: [x - 1, x + 1], lambda x: (x - 5) ** 2, rounds=100)
    assert res.best == 5 and res.curve == [25, 16, 9, 4, 1, 0]
    assert greedy(0, lambda x: [x + 1], lambda x: 0.0, rounds=3).best == 0  # no strict gain: stay
