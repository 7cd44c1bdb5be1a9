"""Saving outputs safely: Hugging Face folders plus prunekit.json."""

from .hf import (
    OutputSlot,
    check_output_dir,
    fmt_bytes,
    model_bytes,
    save_pretrained_atomic,
    stale_temp_folders,
    versions,
    write_hf_folder,
)

__all__ = [
    "OutputSlot",
    "check_output_dir",
    "fmt_bytes",
    "model_bytes",
    "save_pretrained_atomic",
    "stale_temp_folders",
    "versions",
    "write_hf_folder",
]
