"""Decoding room: prunes what the model generates — draft trees verified exactly (speculative decoding, RASD).

``generate(model, tokenizer, prompt, draft=..., max_new_tokens=..., tree_budget=16)`` drafts with
``prompt_lookup``, ``datastore``, ``model`` (any causal LM with the same tokenizer, a pruned one
included) or ``rasd`` (retrieval pruned by the draft's probabilities, fused with the draft tree),
and verifies each tree in one target forward. Greedy output equals plain greedy token for token.
"""

from .drafters import RASD, Compose, Datastore, Drafter, ModelDraft, PromptLookup, datastore, model, prompt_lookup, rasd
from .generate import DecodeStats, GenerateResult, generate, plain_greedy
from .tree import Tree, Trie
from .verify import TreeModel, accept_greedy, accept_sample

__all__ = [
    "RASD", "Compose", "Datastore", "DecodeStats", "Drafter", "GenerateResult", "ModelDraft", "PromptLookup",
    "Tree", "TreeModel", "Trie", "accept_greedy", "accept_sample", "datastore", "generate", "model",
    "plain_greedy", "prompt_lookup", "rasd",
]
