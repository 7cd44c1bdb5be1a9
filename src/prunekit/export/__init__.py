"""Saving outputs safely: Hugging Face folders plus prunekit.json."""

from .hf import check_output_dir, save_pretrained_atomic, versions

__all__ = ["check_output_dir", "save_pretrained_atomic", "versions"]
