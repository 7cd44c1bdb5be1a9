"""The budget: which scored units survive. Never scores anything (scorers live in ``scorers``).

``select`` is a greedy fill under a reader-token budget ``B = round((1 - rate) * N)``: units in
order of decreasing score (ties: earlier first) are kept while they fit. A unit that does not fit
is skipped and the scan goes on, so shorter, lower-scored units can fill the rest (a unit is never
cut: text is never rewritten). The last step: among the skipped units, the one whose addition
brings the total closest to ``B`` is added when that is closer than stopping short (an overshoot
of at most half a unit). ``threshold_keep`` keeps every unit whose score exceeds ``T``
(``T = 0`` keeps everything).
"""

from __future__ import annotations

from typing import Sequence


def select(scores: Sequence[float], costs: Sequence[int], budget: int) -> list[bool]:
    """Keep-mask over units: greedy by score under ``sum(costs[kept]) <= budget`` (see module doc)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    keep = [False] * n
    used = 0
    skipped: list[int] = []
    for i in order:
        if used + costs[i] <= budget:
            keep[i] = True
            used += costs[i]
        else:
            skipped.append(i)
    if skipped:
        best = min(skipped, key=lambda i: (abs(budget - used - costs[i]), order.index(i)))
        if abs(budget - used - costs[best]) < budget - used:
            keep[best] = True
    return keep


def threshold_keep(scores: Sequence[float], threshold: float) -> list[bool]:
    """Keep-mask: ``score > T`` (Provence's sentence rule); ``T = 0`` keeps every unit."""
    if threshold <= 0:
        return [True] * len(scores)
    return [float(s) > threshold for s in scores]
