"""Recovery fine-tuning after pruning: LoRA through peft, merged; sparse masks kept exactly.

See :mod:`prunekit.recovery.lora` (``recover_``, ``RecoveryConfig``) and
:mod:`prunekit.recovery.cli` (``prunekit recover``).
"""

from __future__ import annotations

from .lora import RecoveryConfig, RecoveryReport, attach_lora, is_sparse, merge_lora, recover_, target_names

__all__ = ["RecoveryConfig", "RecoveryReport", "attach_lora", "is_sparse", "merge_lora", "recover_", "target_names"]
