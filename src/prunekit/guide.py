"""The method guide: every registered method on the survey's map, and "which method for my goal?".

The map follows Cheng, Zhang and Shi, *A Survey on Deep Neural Network Pruning: Taxonomy,
Comparison, Analysis, and Recommendations* (arXiv:2308.06767, IEEE TPAMI 2024):

* **speedup** — *universal*: structured removal (heads, channels, blocks) makes every dense
  matmul smaller, so any engine runs it faster; *specific*: unstructured or N:M zeros keep the
  dense shapes and only pay off with sparse kernels or sparse hardware;
* **when** — before, during or after training; every prunekit method prunes *after* training,
  one-shot (post-training, no retraining);
* **criterion** — how importance is scored (magnitude, weight x activation, second-order/OBS
  with reconstruction, fluctuation, first-order Taylor, block similarity).

Metadata lives in :data:`GUIDE`, keyed by registered method name. A method registered without an
entry still appears, with what can be derived from its registry (structured registry: universal;
``needs``: statistics) and "no guide entry yet".

Numbers come from ``benchmarks/results/`` when this is a repository checkout, else from the
package file ``guide_data.json`` that ``benchmarks/guide.py`` writes from those results (a test
keeps the two equal). Nothing here is a hand-copied figure.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SURVEY = ("Cheng, Zhang, Shi: A Survey on Deep Neural Network Pruning: Taxonomy, Comparison, "
          "Analysis, and Recommendations (arXiv:2308.06767)")
NO_ENTRY = "no guide entry yet"
GOALS = ("speed", "quality", "2:4", "domain", "recover", "decode")
GOAL_ALIASES = {"2of4": "2:4", "24": "2:4", "fast": "speed", "faster": "speed", "recovery": "recover",
                "draft": "decode", "speculative": "decode"}
DEFAULT_BUDGET = {"speed": 0.2, "quality": 0.5, "2:4": 0.5, "domain": 0.5, "recover": 0.5, "decode": None}
NO_BUDGET = ("2:4", "decode")  # goals whose answer does not take a --budget
NOISE = 0.02  # BENCHMARKS.md: perplexity ratios within about ±2% are ties
DATA_FILE = Path(__file__).with_name("guide_data.json")
REPO_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
DENSE_ENGINE = "any dense engine: smaller shapes, stock config (loads in plain transformers)"
SPARSE_KERNELS = ("sparse kernels only; dense engines (transformers, llama.cpp, ...) run the zeros, "
                  "stored as dense floats, at dense speed")
NM_KERNELS = "2:4: sparse tensor cores plus a 2:4 kernel (see the 2:4 note)"

_UNSTRUCTURED = {"granularity": "weights (unstructured) or N:M", "speedup": "specific",
                 "runs_fast_on": SPARSE_KERNELS + "; " + NM_KERNELS}
_WIDTH = {"granularity": "attention heads (GQA-valid) + MLP channels", "speedup": "universal",
          "runs_fast_on": DENSE_ENGINE}
_WHEN = "after training, one-shot (post-training, no retraining)"

GUIDE: dict[str, dict[str, str]] = {
    "magnitude": {
        **_UNSTRUCTURED, "when": _WHEN + "; data-free",
        "criterion": "magnitude |W| (per matrix; per_row=true: per output row)",
        "statistics": "none",
        "paper": "Han, Pool, Tran, Dally: Learning both Weights and Connections for Efficient "
                 "Neural Networks, NeurIPS 2015 (arXiv:1506.02626)",
    },
    "wanda": {
        **_UNSTRUCTURED, "when": _WHEN,
        "criterion": "weight x activation |W_ij|·‖X_j‖₂, ranked per output row",
        "statistics": "input norms Σx² per Linear input",
        "paper": "Sun, Liu, Bair, Kolter: A Simple and Effective Pruning Approach for Large "
                 "Language Models, ICLR 2024 (arXiv:2306.11695)",
    },
    "sparsegpt": {
        **_UNSTRUCTURED, "when": _WHEN,
        "criterion": "second-order (OBS) mask + weight reconstruction, blockwise",
        "statistics": "Hessian XXᵀ per Linear input",
        "paper": "Frantar, Alistarh: SparseGPT: Massive Language Models Can Be Accurately Pruned "
                 "in One-Shot, ICML 2023 (arXiv:2301.00774)",
    },
    "alps": {
        **_UNSTRUCTURED, "when": _WHEN,
        "criterion": "layer reconstruction by ADMM (mask search) + conjugate-gradient least-squares refit",
        "statistics": "Hessian XXᵀ per Linear input",
        "paper": "Meng, Behdin, Wang, Mazumder: ALPS: Improved Optimization for Highly Sparse "
                 "One-Shot Pruning for Large Language Models, NeurIPS 2024 (arXiv:2406.07831)",
    },
    "flap": {
        **_WIDTH, "when": _WHEN + "; bias compensation instead of retraining",
        "criterion": "fluctuation: input variance x squared column norm, standardised",
        "statistics": "input mean and variance",
        "runs_fast_on": DENSE_ENGINE + " with structure=uniform|ratio; structure=adaptive "
                        "(per-block widths): prunekit.load or trust_remote_code=True",
        "paper": "An, Zhao, Yu, Tang, Wang: Fluctuation-based Adaptive Structured Pruning for "
                 "Large Language Models, AAAI 2024 (arXiv:2312.11983)",
    },
    "wanda-sp": {
        **_WIDTH, "when": _WHEN,
        "criterion": "weight x activation |W|·‖X_j‖₂ per column group (head / channel)",
        "statistics": "input norms Σx²",
        "paper": "structured Wanda baseline of An et al., AAAI 2024 (arXiv:2312.11983), after "
                 "Sun et al., ICLR 2024 (arXiv:2306.11695)",
    },
    "magnitude-sp": {
        **_WIDTH, "when": _WHEN + "; data-free",
        "criterion": "magnitude: column L2 norm of o_proj / down_proj",
        "statistics": "none",
        "paper": "magnitude baseline of the LLM-Pruner / FLAP papers (arXiv:2305.11627, "
                 "arXiv:2312.11983)",
    },
    "llm-pruner": {
        **_WIDTH, "granularity": "coupled head / MLP-channel groups",
        "when": _WHEN + "; `prune --recover` runs the paper's LoRA recovery in the same run",
        "criterion": "first-order Taylor |w·∂L/∂w| summed over a coupled group",
        "statistics": "calibration gradients (one backward pass per window)",
        "paper": "Ma, Fang, Wang: LLM-Pruner: On the Structural Pruning of Large Language "
                 "Models, NeurIPS 2023 (arXiv:2305.11627)",
    },
    "shortgpt": {
        **_WIDTH, "granularity": "whole decoder blocks (depth)", "when": _WHEN,
        "criterion": "block similarity: Block Influence 1 − cos(block input, block output)",
        "statistics": "hidden states before and after every block (dense model)",
        "paper": "Men, Xu, Zhang, et al.: ShortGPT: Layers in Large Language Models are More Redundant Than "
                 "You Expect, 2024 (arXiv:2403.03853)",
    },
    "armor": {
        "granularity": "N:M only: a 2:4 core wrapped by block-diagonal A·(W′⊙M)·B", "speedup": "specific",
        "runs_fast_on": NM_KERNELS + "; the wrappers are extra block-diagonal matmuls (CPU prefill "
                        "1.33x the dense time on SmolLM2); prunekit.load or trust_remote_code=True "
                        "(llama/mistral/qwen2/qwen3)",
        "when": _WHEN + "; an optimisation per Linear (iterations: a setting)",
        "criterion": "A·(W′⊙M)·B with block-diagonal wrappers fitted by block coordinate descent "
                     "(Adam on A, B; exact 4-group re-selection; core gradient step) on the layer loss",
        "statistics": "Hessian XXᵀ per Linear input",
        "paper": "Liu, Liu, Wang, Zhao, Yang: ARMOR: High-Performance Semi-Structured Pruning via "
                 "Adaptive Matrix Factorization, 2025 (arXiv:2510.05528)",
    },
    "gblm": {
        **_UNSTRUCTURED, "when": _WHEN + "; one backward pass per calibration window first",
        "criterion": "gradient + activation: |W|·‖X_j‖₂ + |W|·√Σ(α·g)², ranked per output row",
        "statistics": "input norms + per-sample squared LM-loss gradients per Linear (dense model)",
        "paper": "Das, Sun, Ma, Shen: Beyond Size: How Gradients Shape Pruning Decisions in Large "
                 "Language Models, 2023 (arXiv:2311.04902)",
    },
    "dpruner": {
        **_UNSTRUCTURED, "when": _WHEN + "; for a target domain (general + domain calibration text)",
        "criterion": "S = Σ_n |g̃W − ½(g̃W)²|, g̃ = g + 2λη²·G·g², G = W²/[U]²_jj on general text; ranked per matrix",
        "statistics": "Hessian on general text + gradients of a regularised domain loss",
        "paper": "Zhang, Liu, Zhao, et al.: Pruning as a Domain-specific LLM Extractor, "
                 "NAACL Findings 2024 (arXiv:2405.06275)",
    },
    "tyr": {
        **_WIDTH, "when": _WHEN + "; global evolutionary search of per-block widths (minutes: its budget is a setting)",
        "criterion": "group OBS cost ½·tr(W_g (H⁻¹)_gg⁻¹ W_gᵀ) per head/channel, least-squares reconstruction; "
                     "per-block widths by evolutionary search, fitness KL to the dense model on calibration tokens",
        "statistics": "Hessian XXᵀ of o_proj/down_proj inputs; dense next-token distributions on calibration tokens",
        "runs_fast_on": DENSE_ENGINE + "; per-block widths: prunekit.load or trust_remote_code=True (a uniform "
                        "result is a stock config)",
        "paper": "Li, Xu, Li, Liu, Yin, Li, Barsoum: Týr-the-Pruner: Structural Pruning LLMs via Global Sparsity "
                 "Distribution Optimization, NeurIPS 2025 (arXiv:2503.09657)",
    },
    "cfsp": {
        **_WIDTH, "granularity": "MLP channels, per-block budgets",
        "criterion": "coarse: angular distance of block input/output sets block budgets; "
                     "fine: activations x weights inside the block",
        "when": _WHEN,
        "statistics": "block inputs/outputs and Linear inputs (one forward pass)",
        "runs_fast_on": DENSE_ENGINE + " for uniform widths; per-block widths: prunekit.load or "
                        "trust_remote_code=True",
        "paper": "Wang, et al.: CFSP: An Efficient Structured Pruning Framework for LLMs with "
                 "Coarse-to-Fine Activation Information, COLING 2025 (arXiv:2409.13199)",
    },
    "adapt-pruner": {
        **_WIDTH, "when": "after training, incremental: ~5% at a time with short recovery training between",
        "criterion": "layer-wise adaptive sparsity (similar input/output loses more) + incremental pruning",
        "statistics": "block input/output similarity; recovery training on calibration text",
        "runs_fast_on": DENSE_ENGINE + " for uniform widths; per-block widths: prunekit.load or "
                        "trust_remote_code=True",
        "paper": "Pan, et al.: Adapt-Pruner: Adaptive Structural Pruning for Efficient Small "
                 "Language Model Training, 2025 (arXiv:2502.03460)",
    },
    "stun": {
        "granularity": "MoE experts, then weights (unstructured)", "speedup": "universal (experts) + specific (weights)",
        "runs_fast_on": DENSE_ENGINE + " for the expert step (fewer experts, stock config for uniform counts)",
        "when": _WHEN + "; mixture-of-experts models",
        "criterion": "experts clustered by router co-activation, one representative per cluster, "
                     "then any unstructured method",
        "statistics": "router co-activation on calibration tokens, then the unstructured method's",
        "paper": "Lee, et al.: STUN: Structured-Then-Unstructured Pruning for Scalable MoE "
                 "Pruning, 2024 (arXiv:2409.06211)",
    },
    "reap": {
        "granularity": "MoE experts", "speedup": "universal",
        "runs_fast_on": DENSE_ENGINE + " (fewer experts; stock config for uniform counts)",
        "when": _WHEN + "; mixture-of-experts models",
        "criterion": "expert score: mean over routed tokens of gate x ‖expert output‖",
        "statistics": "router weights and expert output norms on calibration tokens",
        "paper": "Lasby, et al.: REAP the Experts: Why Pruning Prevails for One-Shot MoE "
                 "Compression, 2025 (arXiv:2510.13999)",
    },
}

TWO_FOUR_NOTE = (
    "2:4 zeros are saved as dense float tensors: transformers, llama.cpp and every dense engine "
    "run them at dense speed (the same dense matmuls). Acceleration needs NVIDIA sparse "
    "tensor cores (compute capability 8.0+) and a kernel: PyTorch's prototype "
    "to_sparse_semi_structured (CUTLASS / cuSPARSELt) gives per-Linear speedups on A100 but "
    "has open reports of slowdowns on H100 (pytorch/pytorch#153825, 2025); vLLM removed its "
    "Marlin 2:4 kernels (vllm#32688, Jan 2026) and its CUTLASS Sparse24 kernels (vllm#36799, "
    "Mar 2026; vLLM >= 0.19.1 raises NotImplementedError, llm-compressor#2720); TensorRT-LLM "
    "has trtllm-build --weight_sparsity, with users reporting little or no speedup (as of "
    "NVIDIA/Model-Optimizer#1974, Jul 2026); llama.cpp has no 2:4 kernels (its sparsity request "
    "ggml-org/llama.cpp#3594 was closed as stale). Sources: docs/METHODS.md."
)


# ----------------------------------------------------------------------------------------------
# taxonomy
@dataclass(frozen=True)
class MethodInfo:
    """One registered method on the survey's map."""

    name: str
    structured: bool
    speedup: str
    granularity: str
    when: str
    criterion: str
    statistics: str
    runs_fast_on: str
    paper: str
    summary: str = ""
    has_entry: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_STAT_NAMES = {"input_sqnorm": "input norms Σx²", "hessian": "Hessian XXᵀ",
               "input_mean": "input mean", "input_var": "input variance",
               "sample": "a sample of inputs"}  # fmt: skip


def _registries() -> tuple[Any, Any]:
    from .methods import METHODS
    from .structured import STRUCTURED_METHODS

    return METHODS, STRUCTURED_METHODS


def registered_methods() -> list[str]:
    """Every registered method name (unstructured and structured), sorted: ``prunekit ls``."""
    from .methods import list_methods

    return list_methods()


def _is_structured(name: str) -> bool:
    METHODS, STRUCTURED = _registries()
    return name in STRUCTURED and name not in METHODS


def _derived_statistics(obj: Any) -> str:
    needs = getattr(obj, "needs", None)
    if needs is None:
        return f"unknown ({NO_ENTRY})"
    names = sorted(_STAT_NAMES.get(getattr(s, "value", str(s)), str(s)) for s in needs)
    return ", ".join(names) or "none declared"


def method_info(name: str) -> MethodInfo:
    """The taxonomy of a registered method; derived from the registry when it has no entry."""
    METHODS, STRUCTURED = _registries()
    key = name.lower()
    if key not in METHODS and key not in STRUCTURED:
        close = difflib.get_close_matches(key, registered_methods(), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"unknown method {name!r}: {hint}choose one of "
                          f"{', '.join(registered_methods())} (`prunekit ls` lists them)")
    structured = _is_structured(key)
    obj = STRUCTURED.get(key) if structured else METHODS.get(key)
    summary = getattr(obj, "summary", "") or ""
    entry = GUIDE.get(key)
    if entry is not None:
        return MethodInfo(name=key, structured=structured, summary=summary, **entry)
    return MethodInfo(
        name=key, structured=structured, summary=summary, has_entry=False,
        speedup="universal" if structured else "specific",
        granularity="structured (heads / channels / blocks)" if structured else _UNSTRUCTURED["granularity"],
        when=f"after training, one-shot ({NO_ENTRY})", criterion=NO_ENTRY,
        statistics=_derived_statistics(obj),
        runs_fast_on=DENSE_ENGINE if structured else SPARSE_KERNELS,
        paper=NO_ENTRY,
    )  # fmt: skip


def taxonomy() -> list[MethodInfo]:
    """Every registered method on the map, in ``prunekit ls`` order."""
    return [method_info(n) for n in registered_methods()]


# ----------------------------------------------------------------------------------------------
# measurements: benchmarks/results -> a small JSON
def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _pattern(cell: dict) -> str:
    return cell["pattern"] if cell["kind"] == "nm" else cell["kind"]


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 decimals: dense ms / pruned ms (prefill), pruned tok/s / dense tok/s (decode)."""
    return round(a / b, 3) if a and b else None


def _cell_speedup(ev: dict, dense_speed: dict | None) -> dict | None:
    """Prefill/decode speedup of a cell: over the dense model timed in turns with it (paired) when
    recorded, else over the dense row timed in another job (unpaired: ±30% on a shared machine)."""
    s = ev.get("speed")
    ref = ev.get("speed_reference")
    base = ref or dense_speed
    if not s or not base:
        return None
    out: dict[str, Any] = {f"prefill_{n}": _ratio(base["prefill_ms"].get(n), ms)
                           for n, ms in sorted(s.get("prefill_ms", {}).items(), key=lambda kv: int(kv[0]))}
    out["decode"] = _ratio(s.get("decode_tok_s"), base.get("decode_tok_s"))  # tok/s: new / dense
    out["paired"] = bool(ref)
    return out


def _source_name(spec: str | None) -> str:
    """``wikitext2:/x/wiki.test.raw`` -> ``WikiText-2 wiki.test.raw``; a path -> its name."""
    kind, _, path = str(spec).rpartition(":") if str(spec).startswith("wikitext2:") else ("", "", str(spec))
    return (f"WikiText-2 {Path(path).name}" if kind else Path(path).name) or str(spec)


def _protocol_entry(d: Path) -> dict | None:
    proto = _read_json(d / "protocol.json")
    dense = _read_json(d / "dense.json")
    if not proto:
        return None
    p = proto.get("protocol", {})
    routine = proto.get("routine", {})
    shape = ("nsamples", "eval_windows")
    is_routine = [p.get(k) for k in shape] == [routine.get(k) for k in shape]
    dense_ev = (dense or {}).get("eval") or {}
    rows = []
    for f in sorted(d.glob("prunekit__*.json")):
        r = _read_json(f)
        if not r or r.get("status") != "ok" or "cell" not in r:
            continue
        c, ev, pr = r["cell"], r.get("eval") or {}, r.get("prune") or {}
        rows.append({
            "method": c["method"], "pattern": _pattern(c), "sparsity": c["sparsity"],
            "perplexity": round(ev["perplexity"], 3) if ev.get("perplexity") is not None else None,
            "prune_s": pr.get("prune_wall_s"), "prune_cpu_s": pr.get("prune_cpu_s"),
            "peak_rss_mb": pr.get("peak_rss_mb"),
            "params_m": round(ev["params"] / 1e6, 1) if ev.get("params") else None,
            "speedup": _cell_speedup(ev, dense_ev.get("speed")),
        })  # fmt: skip
    rows.sort(key=lambda r: (r["pattern"], r["sparsity"], r["method"]))
    return {
        "id": d.name, "routine": is_routine, "model": p.get("model"),
        "calibration": f"{_source_name(p.get('calib_source'))} {p.get('nsamples')} x {p.get('seqlen')} "
                       f"tokens, seed {p.get('seed')}",
        "evaluation": f"{_source_name(p.get('eval_source'))}, seqlen {p.get('eval_seqlen')}, first "
                      f"{p.get('eval_windows')} windows",
        "dense_perplexity": round(dense_ev["perplexity"], 3) if dense_ev.get("perplexity") else None,
        "rows": rows,
    }  # fmt: skip


def _speedup_entry(f: Path) -> dict | None:
    r = _read_json(f)
    if not r or not r.get("rows"):
        return None
    rows = [{"method": x["model"], "sparsity": x["sparsity"],
             "params_m": round(x["params"] / 1e6, 1),
             "prefill": {n: round(v, 3) for n, v in x.get("prefill_speedup", {}).items()},
             "decode": round(x["decode_speedup"], 3) if x.get("decode_speedup") is not None else None}
            for x in r["rows"] if x["model"] != "dense"]  # fmt: skip
    return {"file": f.name, "arch": r["arch"], "source": r.get("source"), "device": r.get("device"),
            "threads": r.get("threads"), "runs": r.get("runs"), "date": r.get("date"), "rows": rows}


def build_data(results: Path | str = REPO_RESULTS) -> dict[str, Any]:
    """The guide's numbers, read from ``benchmarks/results`` (prunekit's own cells only)."""
    results = Path(results)
    protos = [e for d in sorted(results.iterdir()) if d.is_dir() and (e := _protocol_entry(d))] \
        if results.is_dir() else []  # fmt: skip
    protos.sort(key=lambda e: (not e["routine"], e["id"]))
    sd = results / "structured_speedup"
    speed = [e for f in sorted(sd.glob("*.json")) if (e := _speedup_entry(f))] if sd.is_dir() else []
    dd = results / "decoding"
    dec = [e for f in sorted(dd.glob("run_*.json")) if (e := _decoding_entry(f))] if dd.is_dir() else []
    return {"generated_by": "benchmarks/guide.py from benchmarks/results", "protocols": protos,
            "structured_speedup": speed, "decoding": dec}


def _decoding_entry(f: Path) -> dict | None:
    """One ``benchmarks/decoding.py run`` result: per method, per task, the speed-up over plain greedy."""
    r = _read_json(f)
    if not r or not r.get("tasks"):
        return None
    rows: dict[str, dict[str, dict]] = {}
    for task, t in r["tasks"].items():
        for m, x in t.get("methods", {}).items():
            if m != "greedy" and x.get("speedup") is not None:
                tau = x.get("tokens_per_forward")
                rows.setdefault(m, {})[task] = {"speedup": round(x["speedup"], 3), "identical": x["identical"],
                                                "prompts": x["prompts"], "tau": round(tau, 2) if tau else None}
    drafts = {n: Path(v).name for n, v in (r.get("drafts") or {}).items()}
    return {"file": f.name, "target": r["target"], "dtype": r["dtype"], "tree": r["tree"],
            "lookup": r.get("lookup"), "new_tokens": r.get("new_tokens"), "drafts": drafts,
            "command": r.get("command"), "rows": rows}


def load_data() -> dict[str, Any]:
    """Live numbers from a repository checkout, else the packaged copy, else none."""
    if REPO_RESULTS.is_dir() and any(REPO_RESULTS.iterdir()):
        return build_data(REPO_RESULTS)
    return _read_json(DATA_FILE) or {"protocols": [], "structured_speedup": []}


# ----------------------------------------------------------------------------------------------
# recommendations
@dataclass
class Recommendation:
    """What to run for a goal, and the measured evidence behind it."""

    goal: str
    method: str
    pattern: str
    sparsity: float | None
    summary: str
    command: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_goal(goal: str) -> str:
    key = str(goal).strip().lower()
    key = GOAL_ALIASES.get(key, key)
    if key in GOALS:
        return key
    close = difflib.get_close_matches(key, GOALS, n=2, cutoff=0.4)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(f"unknown goal {goal!r}: {hint}choose one of {', '.join(GOALS)} "
                      "(e.g. `prunekit recommend --goal speed`)")


def _check_budget(budget: float | None) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
            or not 0 < budget < 1:  # fmt: skip
        raise ConfigError(f"budget must be the fraction to remove, strictly between 0 and 1, got "
                          f"{budget!r}: e.g. --budget 0.2")
    return float(budget)


def _pct(x: float) -> str:
    return f"{round(x * 100, 4):g}%"


# Benchmark cells that are variants of a registered method -> (method, the flags that reproduce them);
# "+ALLOCATION" may follow any cell name (benchmarks/run.py's VARIANTS; e.g. sparsegpt+owl).
CELL_VARIANTS: dict[str, tuple[str, str]] = {
    "sparsegpt-refit": ("sparsegpt", "--set refit=pcg"),
    "wanda-dsnot": ("wanda", "--set refine=dsnot"),
    "sparsegpt-dsnot": ("sparsegpt", "--set refine=dsnot"),
    "wanda-dsnot-attn": ("wanda", "--set refine=dsnot --set refine_layers=attention"),
    "armor-it5": ("armor", "--set iters=5"),
    "armor-it20": ("armor", "--set iters=20"),
}


def cell_method(cell: str) -> tuple[str, str]:
    """``"sparsegpt-refit+owl"`` -> ``("sparsegpt", "--set refit=pcg --allocation owl")``."""
    base, _, alloc = cell.partition("+")
    method, flags = CELL_VARIANTS.get(base, (base, ""))
    return method, f"{flags} --allocation {alloc}".strip() if alloc else flags


def _candidates(data: dict, names: set[str], pattern: str, budget: float) -> tuple[dict | None, list[dict]]:
    """The protocol that measured ``names`` (and their variants: allocations, settings) at the
    sparsity nearest ``budget`` — nearest first, then the most rows, then the routine protocol —
    and its rows there, best perplexity first."""
    best: tuple[tuple, dict | None, list[dict]] = ((-1.0, 0), None, [])
    for P in data.get("protocols", []):
        rows = [r for r in P["rows"] if cell_method(r["method"])[0] in names and r["pattern"] == pattern
                and r["perplexity"] is not None]  # fmt: skip
        if not rows:
            continue
        sp = min({r["sparsity"] for r in rows}, key=lambda s: (abs(s - budget), s))
        at = sorted((r for r in rows if r["sparsity"] == sp), key=lambda r: r["perplexity"])
        rank = (-round(abs(sp - budget), 9), len(at), P["routine"])
        if rank > best[0]:
            best = (rank, P, at)
    return best[1], best[2]


def _row_text(P: dict, r: dict, short: bool = False) -> str:
    head = (f"{r['method']} {r['pattern'] if r['pattern'] == '2:4' else _pct(r['sparsity'])}: "
            f"perplexity {r['perplexity']:,.2f}")
    if short:
        return head
    return (f"{head} (dense {P['dense_perplexity']:.2f}; {'routine' if P['routine'] else 'reduced'} "
            f"protocol {P['calibration']}, {P['evaluation']})")


def _evidence(P: dict, r: dict) -> dict[str, Any]:
    return {"protocol": P["id"], "routine": P["routine"], "dense_perplexity": P["dense_perplexity"], **r}


def _paired_speedups(data: dict, method: str, sparsity: float) -> list[str]:
    out = []
    for e in data.get("structured_speedup", []):
        for r in e["rows"]:
            if r["method"] == method and abs(r["sparsity"] - sparsity) < 1e-9:
                pre = ", ".join(f"prefill {n} {v:.2f}x" for n, v in r["prefill"].items())
                dec = f", decode {r['decode']:.2f}x" if r["decode"] is not None else ""
                out.append(f"{e['arch']} shapes ({e['device']}, {e['threads']} thread): {pre}{dec}")
    for P in data.get("protocols", []):
        for r in P["rows"]:
            s = r.get("speedup")
            if r["method"] == method and r["sparsity"] == sparsity and s and s["paired"]:
                pre = ", ".join(f"prefill {k.split('_')[1]} {v:.2f}x" for k, v in s.items()
                                if k.startswith("prefill_") and v)  # fmt: skip
                out.append(f"{P['model']} ({'routine' if P['routine'] else 'reduced'} protocol): "
                           f"{pre}, decode {s['decode']:.2f}x")
    return out


def _noise_note(at: list[dict]) -> list[str]:
    if len(at) > 1 and at[1]["perplexity"] <= at[0]["perplexity"] * (1 + NOISE):
        return [f"{at[0]['method']} and {at[1]['method']} are within ±{NOISE:.0%} "
                "(run-to-run noise, see BENCHMARKS.md): a tie."]
    return []


def _fallback(names: list[str], preferred: tuple[str, ...]) -> str:
    for n in preferred:
        if n in names:
            return n
    return names[0]


def _unstructured_names() -> list[str]:
    return [n for n in registered_methods() if not _is_structured(n)]


def _structured_names() -> list[str]:
    return [n for n in registered_methods() if _is_structured(n)]


def _rec_ranked(goal: str, data: dict, names: list[str], pattern: str, budget: float,
                preferred: tuple[str, ...]) -> tuple[Recommendation, dict | None, list[dict]]:
    P, at = _candidates(data, set(names), pattern, budget)
    if not at:
        m = _fallback(names, preferred)
        rec = Recommendation(goal, m, pattern, budget, f"{m} (no measured numbers available)", "",
                             notes=["no benchmark numbers found (benchmarks/results or the "
                                    "packaged guide_data.json); this is the guide's default"])
        return rec, None, []
    best = at[0]
    rec = Recommendation(goal, best["method"], pattern, budget, _row_text(P, best), "",
                         evidence=[_evidence(P, r) for r in at],
                         alternatives=[_row_text(P, r, short=True) for r in at[1:]],
                         notes=_noise_note(at))
    if abs(best["sparsity"] - budget) > 1e-9:
        rec.notes.append(f"measured at {_pct(best['sparsity'])}, not at the requested "
                         f"{_pct(budget)}: losses grow quickly with sparsity, so measure yours")
    for Q in data.get("protocols", []):
        same = [r for r in Q["rows"] if Q is not P and r["method"] == best["method"]
                and r["pattern"] == pattern and r["sparsity"] == best["sparsity"]]  # fmt: skip
        rec.evidence += [_evidence(Q, r) for r in same]
        rec.notes += [f"the same cell on the other protocol: {_row_text(Q, r)}" for r in same]
        rivals = sorted((r for r in Q["rows"] if Q is not P and r["method"] in names and r["pattern"] == pattern
                         and r["sparsity"] == best["sparsity"] and r["perplexity"] is not None),
                        key=lambda r: r["perplexity"])  # fmt: skip
        if same and rivals and rivals[0]["method"] != best["method"]:
            rec.notes.append(f"on that protocol {_row_text(Q, rivals[0], short=True)} ranked first")
    return rec, P, at


def _cmd(method: str, extra: str, calib: str = "YOUR_CALIB_DATA") -> str:
    method, flags = cell_method(method)  # a benchmark variant: the registered method and its flags
    return f"prunekit prune MODEL --method {method} {flags} {extra} --calib {calib} --out OUT".replace("  ", " ")


def _speed(data: dict, budget: float) -> Recommendation:
    names = _structured_names()
    rec, P, at = _rec_ranked("speed", data, names, "structured", budget, ("flap", "llm-pruner"))
    rec.command = _cmd(rec.method, f"--sparsity {budget:g}")
    sp = at[0]["sparsity"] if at else budget
    ups = _paired_speedups(data, rec.method, sp)
    rec.notes.insert(0, "structured removal is a universal speedup: the saved model is smaller "
                        "and runs faster on any dense engine (stock config).")
    rec.notes += [f"measured speedup of {rec.method} {_pct(sp)} (timed in turns with dense): {u}"
                  for u in ups] or [f"no paired speed measurement of {rec.method} {_pct(sp)} yet"]
    fastest = _fastest(data, {r["method"] for r in at}, sp)
    if fastest and fastest[0] != rec.method:
        rec.notes.append(f"fastest measured at {_pct(sp)}: {fastest[0]} (decode {fastest[1]:.2f}x "
                         "paired), at a higher perplexity")
    return rec


def _fastest(data: dict, names: set[str], sp: float) -> tuple[str, float] | None:
    best = None
    for e in data.get("structured_speedup", []):
        for r in e["rows"]:
            faster = r["decode"] and (not best or r["decode"] > best[1])
            if r["method"] in names and r["sparsity"] == sp and faster:
                best = (r["method"], r["decode"])
    for P in data.get("protocols", []):
        for r in P["rows"]:
            s = r.get("speedup")
            if r["method"] in names and r["sparsity"] == sp and s and s["paired"] and s["decode"] \
                    and (not best or s["decode"] > best[1]):  # fmt: skip
                best = (r["method"], s["decode"])
    return best


def _quality(data: dict, budget: float, goal: str = "quality") -> Recommendation:
    rec, _, _ = _rec_ranked(goal, data, _unstructured_names(), "unstructured", budget,
                            ("sparsegpt", "wanda"))
    rec.command = _cmd(rec.method, f"--sparsity {budget:g}")
    if goal == "quality":
        rec.notes.append("unstructured zeros are a specific speedup: the saved model is the same "
                         "size and runs at dense speed on dense engines; the win is quality at a "
                         "sparsity, or a start for sparse kernels / compression.")
    return rec


def _two_four(data: dict, budget: float | None) -> Recommendation:
    rec, _, _ = _rec_ranked("2:4", data, _unstructured_names(), "2:4", 0.5, ("sparsegpt", "wanda"))
    rec.sparsity = 0.5
    rec.command = _cmd(rec.method, "--pattern 2:4")
    if budget is not None and budget != 0.5:
        rec.notes.append(f"2:4 fixes the sparsity at 50%; the budget {budget:g} is ignored "
                         "(use --pattern N:M, e.g. 4:8, or --goal quality for other sparsities)")
    rec.notes.append(TWO_FOUR_NOTE)
    return rec


def _domain(data: dict, budget: float) -> Recommendation:
    rec = _quality(data, budget, goal="domain")
    rec.command = _cmd(rec.method, f"--sparsity {budget:g}", calib="path/to/your-domain.jsonl")
    rec.notes.insert(0, "domain-aware pruning today = calibrate on your domain's text: every "
                        "calibrated method scores weights on the calibration data, so pass "
                        "--calib with a .txt/.jsonl file or folder of your domain and evaluate on "
                        "held-out domain text (prunekit eval --data).")
    rec.notes.insert(1, "D-Pruner (Zhang et al., NAACL Findings 2024, arXiv:2405.06275: domain-specific "
                        "importance regularised by general importance) is `--method dpruner --set "
                        "domain=YOUR_DOMAIN_SOURCE` (general text from --calib); see BENCHMARKS.md, D-Pruner.")
    return rec


def has_recover_command() -> bool:
    """Whether the installed prunekit has the ``prunekit recover`` subcommand (its room is importable;
    asked without importing the CLI, which imports this module)."""
    import importlib.util

    try:
        return importlib.util.find_spec("prunekit.recovery.cli") is not None
    except (ImportError, ValueError):  # pragma: no cover
        return False


def _recover(data: dict, budget: float) -> Recommendation:
    rec = _quality(data, budget, goal="recover")
    if has_recover_command():
        rec.notes.insert(0, "prune, then run `prunekit recover` on the pruned folder "
                            "(see `prunekit recover --help`). On SmolLM2-135M, full fine-tuning of the block "
                            "Linears (`--adapter full --precision bf16 --lr 1e-4`; zeros kept on sparse models) "
                            "closed more of the perplexity gap per token and per CPU-second than LoRA, with or "
                            "without `--distill`, and packing every document end to end into 2048-token "
                            "windows (`--windows packed --seqlen 2048 --batch-size 1`) beat random 512-token "
                            "windows at the same token budget (BENCHMARKS.md, Recovery).")
        return rec
    rec.notes.insert(0, "recovery fine-tuning (`prunekit recover`) is not yet implemented. Until "
                        "it is, lose less in the first place: SparseGPT reconstructs the remaining "
                        "weights and FLAP folds a bias compensation, both training-free recovery; "
                        "the LoRA recovery of LLM-Pruner is not implemented either.")
    return rec


def _draft_method(name: str) -> tuple[str, float | None] | None:
    """``shortgpt50`` -> ("shortgpt", 0.5): the benchmark names pruned drafts METHOD + percent."""
    import re

    m = re.fullmatch(r"([a-z][a-z-]*?)-?(\d{1,2})?", name)
    unstructured, structured = _registries()
    if not m or (m.group(1) not in unstructured and m.group(1) not in structured):
        return None
    return m.group(1), (int(m.group(2)) / 100 if m.group(2) else None)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _per_task(cells: dict[str, dict]) -> str:
    return ", ".join(f"{t} {c['speedup']:.2f}x" for t, c in cells.items())


def _decode(data: dict) -> Recommendation:
    """The pruned draft with the largest median speed-up over its dense target's plain greedy."""
    best, retrieval = None, None
    for e in data.get("decoding", []):
        for m, cells in e["rows"].items():
            med = _median([c["speedup"] for c in cells.values()])
            draft = m.split(":", 1)[1] if ":" in m else None
            pm = _draft_method(draft) if draft else None
            if pm and (best is None or med > best[0]):
                best = (med, e, m, pm, cells)
    if best is None:
        rec = Recommendation("decode", "shortgpt", "structured", 0.5, "shortgpt (no measured decoding runs "
                             "available)", "prunekit prune MODEL --method shortgpt --sparsity 0.5 --calib "
                             "YOUR_CALIB_DATA --out DRAFT && prunekit decode MODEL --draft DRAFT --lookup 2:10 "
                             "--check --prompt TEXT")
        rec.notes.append("run `python benchmarks/decoding.py run --target MODEL --draft NAME=DRAFT ...` to measure")
        return rec
    med, e, m, (method, sp), cells = best
    ident = sum(c["identical"] for c in cells.values()), sum(c["prompts"] for c in cells.values())
    mode = "RASD (retrieval tree pruned by the draft, fused with its tree)" if "rasd" in m else "draft model"
    look = f" --lookup {e['lookup']}" if "rasd" in m and e.get("lookup") else ""
    spflag = f" --sparsity {sp:g}" if sp else ""
    rec = Recommendation(
        "decode", method, "structured" if method in _registries()[1] else "unstructured", sp,
        f"a {method}{' ' + _pct(sp) if sp else ''} draft of {e['target']} as {mode}: median {med:.2f}x "
        f"tokens/s over plain greedy ({_per_task(cells)}; {e['dtype']}, tree {e['tree']}, batch 1, "
        f"greedy; identical ids on {ident[0]}/{ident[1]} prompts)",
        f"prunekit prune {e['target']} --method {method}{spflag} --calib YOUR_CALIB_DATA --out DRAFT && "
        f"prunekit decode {e['target']} --draft DRAFT{look} --tree {e['tree']} --check --prompt TEXT")
    rec.evidence = [{"file": x["file"], "target": x["target"], "dtype": x["dtype"], "method": k,
                     "median_speedup": round(_median([c["speedup"] for c in v.values()]), 3)}
                    for x in data.get("decoding", []) for k, v in x["rows"].items()]
    others = sorted({(round(_median([c["speedup"] for c in v.values()]), 2), k) for x in data["decoding"]
                     if x["target"] == e["target"] for k, v in x["rows"].items() if ":" in k and k != m
                     and _draft_method(k.split(":", 1)[1])}, reverse=True)[:4]
    rec.alternatives = [f"{k} {s:.2f}x" for s, k in others]
    rec.notes.append("speculative decoding keeps the dense model's output (greedy: the same token ids "
                     "in float32; bfloat16 near-ties can flip, for transformers' own assisted generation "
                     "too); a pruned draft is only worth its forward when it agrees often: unrecovered "
                     "drafts alone were slower than plain greedy here, with retrieval (RASD) faster")
    for x in data.get("decoding", []):  # the same target without any draft model
        for k, cells_k in x["rows"].items():
            kmed = _median([c["speedup"] for c in cells_k.values()])
            if x["target"] == e["target"] and ":" not in k and k.startswith("pk-") \
                    and (retrieval is None or kmed > retrieval[0]):  # fmt: skip
                retrieval = (kmed, x, k, None, cells_k)
    if retrieval:
        rmed, re_, rm, _, rc = retrieval
        rec.notes.append(f"no draft model at all: {rm} on {re_['target']} ({re_['dtype']}) median {rmed:.2f}x "
                         f"({_per_task(rc)}): `prunekit decode MODEL --lookup 2:10` when outputs copy the prompt")
    return rec


def recommend(goal: str, budget: float | None = None, *, data: dict | None = None) -> Recommendation:
    """Recommend a registered method for ``goal`` (speed, quality, 2:4, domain, recover, decode).

    ``decode``: which pruned draft gives a dense model the largest speculative-decoding speed-up
    (``prunekit decode``), from the measured decoding runs; the method is the draft's pruning method.

    ``budget`` is the fraction to remove, in (0, 1): of decoder-block parameters for ``speed``
    (structured), of weights otherwise. Evidence is read from the benchmark results
    (:func:`load_data`; ``data`` overrides it, e.g. a :func:`build_data` of another folder).
    """
    key = _check_goal(goal)
    b = _check_budget(budget)
    data = load_data() if data is None else data
    bb = DEFAULT_BUDGET[key] if b is None else b
    if key == "speed":
        return _speed(data, bb)
    if key == "quality":
        return _quality(data, bb)
    if key == "2:4":
        return _two_four(data, b)
    if key == "domain":
        return _domain(data, bb)
    if key == "decode":
        if b is not None:
            raise ConfigError("--budget does not apply to --goal decode (the answer ranks the measured "
                              "pruned drafts of every sparsity); leave it out")
        return _decode(data)
    return _recover(data, bb)


# ----------------------------------------------------------------------------------------------
# terminal
def render_recommendation(rec: Recommendation) -> str:
    how = rec.pattern + (f", {_pct(rec.sparsity)}" if rec.sparsity else "")
    L = [f"goal {rec.goal}: {rec.method} ({how})", f"  why: {rec.summary}"]
    if rec.command:
        L.append(f"  run: {rec.command}")
    if rec.alternatives:
        L.append(f"  also measured (same protocol): {'; '.join(rec.alternatives)}")
    L += [f"  note: {n}" for n in rec.notes]
    return "\n".join(L)


def render_taxonomy() -> str:
    L = [f"methods on the survey's map ({SURVEY}):",
         f"  {'name':<14} {'speedup':<10} {'granularity':<44} {'criterion':<60} statistics"]
    for m in taxonomy():
        crit = m.criterion if len(m.criterion) <= 58 else m.criterion[:57] + "…"
        L.append(f"  {m.name:<14} {m.speedup:<10} {m.granularity[:43]:<44} {crit:<60} {m.statistics}")
    L.append("  every method: " + _WHEN + "; full table, output needs and papers: docs/METHODS.md")
    return "\n".join(L)


def render_guide(goal: str | None = None, budget: float | None = None) -> str:
    """The guide for the terminal: the taxonomy and one recommendation per goal, or one goal's."""
    if goal is not None:
        return render_recommendation(recommend(goal, budget))
    _check_budget(budget)
    parts = [render_taxonomy(), "", "which method for my goal? (`prunekit recommend --goal G`)"]
    parts += [render_recommendation(recommend(g, budget if g not in NO_BUDGET else None)) for g in GOALS]
    return "\n".join(parts)


def guide_text() -> str:
    """What ``prunekit ls --guide`` prints."""
    return render_guide()


def add_recommend_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prunekit recommend --goal G [--budget S] [--json]`` to the CLI's subparsers."""
    p = subparsers.add_parser("recommend", help="which method for a goal: " + ", ".join(GOALS))
    p.add_argument("--goal", "-g", default=None,
                   help="speed | quality | 2:4 | domain | recover | decode (default: the whole guide)")
    p.add_argument("--budget", "-s", type=float, default=None,
                   help="fraction to remove, in (0, 1) (default: 0.2 for speed, 0.5 otherwise)")
    p.add_argument("--json", action="store_true", help="print the recommendation as JSON (last line)")
    return p


def cmd_recommend(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``prunekit recommend``: print the text (unless --json) and return the JSON payload."""
    if args.goal is None:
        if not args.json:
            print(render_guide(None, args.budget))
        _check_budget(args.budget)
        return {"goals": {g: recommend(g, args.budget if g not in NO_BUDGET else None).to_dict() for g in GOALS},
                "methods": [m.to_dict() for m in taxonomy()]}
    rec = recommend(args.goal, args.budget)
    if not args.json:
        print(render_recommendation(rec))
    return rec.to_dict()


__all__ = [
    "GOALS", "GUIDE", "MethodInfo", "Recommendation", "add_recommend_parser", "build_data",
    "cmd_recommend", "guide_text", "load_data", "method_info", "recommend", "render_guide",
    "taxonomy",
]  # fmt: skip
