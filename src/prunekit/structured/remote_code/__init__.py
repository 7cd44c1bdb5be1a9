"""Modeling code that prunekit copies into folders saved with per-block widths.

``modeling_prunekit.py`` is written to be read by ``transformers`` alone (``trust_remote_code``):
it must import nothing from prunekit. It is shipped as a module of this package so that it is
always installed with prunekit; :func:`prunekit.structured.per_block.write_remote_code` copies it.
"""
