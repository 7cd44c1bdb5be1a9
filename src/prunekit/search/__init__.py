"""prunekit.search: generic discrete search engines with pluggable fitness (no model code).

:func:`evolve` is the elitist, staged evolutionary loop of Týr-the-Pruner (arXiv:2503.09657),
extracted from ``structured/tyr.py`` so that other rooms (``prunekit.prompts``: PromptQuine,
ClaPS) search with the same engine; :func:`greedy` is coordinate-wise greedy search.

Layering: this room imports nothing from prunekit's weight rooms (it is plain Python over
opaque candidates), so ``structured/tyr.py`` importing it is the one sanctioned exception to
"a new room may import the weight rooms, never the reverse" (issue 40's design).
"""

from .engine import EvolveResult, evolve, greedy, offspring

__all__ = ["EvolveResult", "evolve", "greedy", "offspring"]
