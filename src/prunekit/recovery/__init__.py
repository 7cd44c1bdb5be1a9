"""Recovery fine-tuning after pruning: LoRA through peft, merged; sparse masks kept exactly.

See :mod:`prunekit.recovery.lora` (``recover_``, ``RecoveryConfig``) and
:mod:`prunekit.recovery.cli` (``prunekit recover``). Names are imported lazily (PEP 562), so the
CLI's parser does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"RecoveryConfig": "config", "RecoveryReport": "lora", "attach_lora": "lora", "is_sparse": "lora",
         "merge_lora": "lora", "recover_": "lora", "target_names": "lora"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
