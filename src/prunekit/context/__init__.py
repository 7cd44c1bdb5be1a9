"""Query-aware pruning of what a reader model reads: sentence units of retrieved passages scored, then kept under a reader-token budget or a threshold.

::

    import prunekit as pk
    r = pk.context.prune("Who won?", passages, method="bm25", rate=0.5, reader_tokenizer="smollm2-135m")
    r.text                      # the kept text (spans of the input joined; nothing rewritten)
    r.kept[i]                   # kept Span(start, end, score) of passage i: passages[i][s.start:s.end]
    r.tokens_before, r.tokens_after, r.achieved_rate   # counted with the reader's tokenizer
    pk.context.compress_prompt(context, question="Who won?", rate=0.5)   # LLMLingua-shaped dict
    pk.context.rank(query, documents, select="idcm", k=4, lm="smollm2-135m")  # IDCM cascade ranking

Methods (``METHODS``): ``provence`` (trained MiniLM token keep/drop + rerank heads), ``similarity``
(MiniLM cosine of unit and question), ``bm25``, ``selective-context`` (self-information under a
causal LM, query-agnostic) and ``random`` (the floor). A scorer never decides the budget: scores
go to :func:`prunekit.context.budget.select` (``rate``) or a threshold.
"""

from __future__ import annotations

from .core import METHODS, PruneResult, compress_prompt, prune
from .rank import SELECTS, QueryLikelihood, RankResult, rank

__all__ = ["METHODS", "PruneResult", "prune", "compress_prompt", "rank", "RankResult", "SELECTS", "QueryLikelihood"]
