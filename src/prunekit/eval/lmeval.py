"""Optional lm-evaluation-harness integration (``pip install prunekit[lmeval]``).

:func:`run_lm_eval` wraps an in-memory model and tokenizer in lm-eval's ``HFLM`` and calls
``lm_eval.simple_evaluate`` (Gao et al., *A framework for few-shot language model evaluation*,
EleutherAI). Stock lm-eval tasks download their datasets; offline, pass ``include_path`` with a
local task YAML (``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(
            f"lm-eval is not installed ({e.msg if hasattr(e, 'msg') else e}): pip install prunekit[lmeval]"
        ) from None
    return lm_eval, HFLM, TaskManager


def _flatten(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"acc,none": x, "acc_stderr,none": s}`` -> ``{"metrics": {"acc": x}, "stderr": {"acc": s}}``;
    a filter other than ``none`` stays in the name (``exact_match,strict-match``)."""
    out: dict[str, dict[str, Any]] = {}
    for task, row in results.items():
        metrics, stderr = {}, {}
        for key, value in row.items():
            if "," not in key:
                continue
            name, filt = key.split(",", 1)
            target = stderr if name.endswith("_stderr") else metrics
            name = name.removesuffix("_stderr")
            full = name if filt == "none" else f"{name},{filt}"
            target[full] = float(value) if isinstance(value, (int, float)) else None  # "N/A": None
        out[task] = {"metrics": metrics, "stderr": stderr, "alias": row.get("alias", task)}
    return out


def run_lm_eval(
    model: nn.Module,
    tokenizer,
    tasks: str | Sequence[str],
    limit: int | None = None,
    *,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    include_path: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on the in-memory ``model``.

    Args:
        tasks: lm-eval task names (``"piqa,lambada_openai"`` or a list).
        limit: first ``limit`` examples per task (None: all).
        num_fewshot: overrides the tasks' default few-shot count.
        batch_size: ``HFLM`` batch size.
        include_path: a folder of extra task YAMLs (local data, offline).
        kw: passed on to ``lm_eval.simple_evaluate`` (e.g. ``bootstrap_iters``).

    Returns:
        ``{"tasks": {task: {"metrics": {...}, "stderr": {...}, "alias": str}}, "n": {task: int},
        "versions": {...}, "raw": <simple_evaluate's "results">}``, plus ``"samples"`` (per-example
        requests and responses) with ``log_samples=True``.

    Raises:
        ConfigError: lm-eval is missing, ``limit < 1``, or no task given.
    """
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ConfigError(f"no lm-eval task given in {tasks!r}: use e.g. 'piqa'")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1 (or None), got {limit!r}")
    import logging

    # lm-eval warns about passing an in-memory model (what prunekit means to do) before any error of
    # its own: keep stderr for results and the one error line (PRUNEKIT_LOG=INFO shows them again)
    quiet = logging.getLogger("lm_eval")
    old_level = quiet.level
    if quiet.getEffectiveLevel() >= logging.WARNING:
        quiet.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot, task_manager=manager, **kw
        )
    finally:
        quiet.setLevel(old_level)
    if res is None:  # only on non-zero ranks in distributed runs
        return {"tasks": {}, "n": {}, "versions": {}, "raw": {}}
    n = {t: v.get("effective", v.get("original")) for t, v in res.get("n-samples", {}).items()}
    out = {"tasks": _flatten(res["results"]), "n": n, "versions": res.get("versions", {}), "raw": res["results"]}
    if "samples" in res:  # log_samples=True
        out["samples"] = res["samples"]
    return out
