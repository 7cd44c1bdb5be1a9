"""Saving outputs safely: Hugging Face folders plus prunekit.json."""

from .hf import (
    OutputSlot,
    atomic_file,
    check_output_dir,
    check_output_file,
    fmt_bytes,
    model_bytes,
    save_pretrained_atomic,
    stale_temp_folders,
    versions,
    write_hf_folder,
)

__all__ = [
    "OutputSlot",
    "atomic_file",
    "check_output_dir",
    "check_output_file",
    "fmt_bytes",
    "model_bytes",
    "save_pretrained_atomic",
    "stale_temp_folders",
    "versions",
    "write_hf_folder",
]
