"""prunekit.prompts: prompt pruning / search for few-shot classification under an LM-call budget.

PromptQuine (arXiv:2506.17930): evolve an ICL prompt by token deletion (found prompt = a mask of
kept positions). ClaPS (arXiv:2310.12774): k-means of the input embeddings, influence probe,
greedy or genetic search over the pruned vocabulary. Both run on :mod:`prunekit.search`.
"""

from .api import METHODS, SearchConfig, SearchResult, search
from .promptquine import PrunedPrompt
from .scorer import Score, Scorer
from .tasks import TASKS, Task, load_task

__all__ = ["METHODS", "TASKS", "PrunedPrompt", "Score", "Scorer", "SearchConfig", "SearchResult", "Task",
           "load_task", "search"]
