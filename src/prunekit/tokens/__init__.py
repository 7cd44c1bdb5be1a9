"""Tokens room: prunes the tokens a model computes — one in-model hook (scorer → selector → recovery).

``patch(model, method="fastv", keep=0.25, layer=2)`` shortens the sequence from decoder layer
``K`` on during prefill (FastV, Recoverable Compression, random; visual-token span found from
``input_ids`` on LLaVA-style models); ``method="ftp"`` routes tokens around blocks with trained
routers (FTP). ``unpatch(model)`` restores the model and returns the counts; ``stats(model)``
reads them (tokens removed per layer, token-blocks computed vs dense).
"""

from __future__ import annotations


from .api import parse_spec, patch, stats, unpatch
from .hook import TokenPatch, decoder_layers, get_patch
from .methods import METHODS, TokenPruneConfig

__all__ = ["METHODS", "TokenPatch", "TokenPruneConfig", "decoder_layers", "get_patch", "patch", "stats", "unpatch"]
