"""Calibration and evaluation text sources."""

from .sources import (
    SOURCE_KINDS,
    TextSource,
    calibration_windows,
    eval_token_ids,
    load_source,
)

__all__ = ["SOURCE_KINDS", "TextSource", "calibration_windows", "eval_token_ids", "load_source"]
