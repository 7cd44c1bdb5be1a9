"""Find the decoder blocks of any causal LM, without a hand-written adapter.

The layer-wise engine needs one thing from a model: the ``nn.ModuleList`` of its repeated decoder
blocks (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``, ...).
Discovery takes the outermost ``ModuleList`` whose members all have one class and which holds the
most parameters, preferring lists as long as the text config's ``num_hidden_layers`` and not
named like a vision/audio tower or an encoder. Families with an adapter (``adapters.ADAPTERS``) keep using it: structured
pruning needs its projection names, and where discovery is ambiguous an adapter decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .adapters import ADAPTERS, ModelAdapter

# A second, separate block list holding at least this fraction of the largest one's parameters
# (a vision tower beside a text stack, an encoder beside a decoder) makes discovery ambiguous.
AMBIGUOUS_RATIO = 0.5


@dataclass(frozen=True)
class DiscoveredBlocks:
    """Where a model's decoder blocks are: what the engine needs (``blocks``, ``block_prefix``)."""

    family: str
    blocks_path: str

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def block_prefix(self, i: int) -> str:
        return f"{self.blocks_path}.{i}"


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_lists(model: nn.Module) -> list[tuple[str, int]]:
    """Outermost ModuleLists of identical-class, parameter-holding members, largest first."""
    found: list[tuple[str, int]] = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        n = _param_count(mod)
        if n:
            found.append((name, n))
    outer = [(n, c) for n, c in found if not any(n.startswith(o + ".") for o, _ in found)]
    return sorted(outer, key=lambda t: -t[1])


_NOT_TEXT = ("vision", "visual", "image", "audio", "speech", "encoder.")


def _prefer_text_stack(model: nn.Module, lists: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Narrow the candidates to the text decoder: lists as long as the text config's
    ``num_hidden_layers``, then names not of a vision/audio tower or encoder (a SigLIP tower can
    hold more parameters than a small text stack)."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "num_hidden_layers", None)
    if n is not None:
        same = [(p, c) for p, c in lists if len(model.get_submodule(p)) == n]
        lists = same or lists
    text_named = [(p, c) for p, c in lists if not any(t in p for t in _NOT_TEXT)]
    return text_named or lists


def discover_blocks(model: nn.Module) -> DiscoveredBlocks:
    """The decoder blocks of ``model``, found from its module tree.

    Raises:
        ConfigError: no repeated block list, or two comparable separate ones.
    """
    family = str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)
    lists = _prefer_text_stack(model, _block_lists(model))
    if not lists:
        raise ConfigError(
            f"no decoder blocks found in {type(model).__name__} (family {family!r}): prunekit needs "
            "a ModuleList of identical decoder layers such as model.layers; add an adapter in "
            "prunekit/models/adapters.py"
        )
    if len(lists) > 1 and lists[1][1] >= AMBIGUOUS_RATIO * lists[0][1]:
        found = ", ".join(f"{n} ({c:,} parameters)" for n, c in lists[:3])
        raise ConfigError(
            f"ambiguous decoder blocks in {type(model).__name__} (family {family!r}): {found}; "
            "add an adapter in prunekit/models/adapters.py naming blocks_path"
        )
    return DiscoveredBlocks(family, lists[0][0])


def engine_adapter(model: nn.Module) -> ModelAdapter | DiscoveredBlocks:
    """The family's adapter when one exists (unchanged paths), discovered blocks otherwise."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt in ADAPTERS:
        return ADAPTERS[mt]
    return discover_blocks(model)


# Families exercised by tests/test_families.py with tiny random models (model_type values).
TESTED_FAMILIES: tuple[str, ...] = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2",
    "gpt_neox", "opt", "falcon", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss",
    "deepseek_v3",
)  # fmt: skip
MOE_FAMILIES = frozenset({"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3"})


PER_BLOCK_ONLY = ("tyr", "cfsp", "adapt-pruner")  # structured methods that always save per-block widths


def family_support() -> list[dict]:
    """What works on each tested family, derived from the code (for ``prunekit ls``).

    Each row: ``family``, ``blocks`` ("adapter" or "discovered"), ``unstructured`` and ``nm``
    (always True: the engine prunes any discovered block), ``moe`` (per-expert statistics),
    ``structured``: block removal (shortgpt, which needs only the blocks) everywhere,
    width methods (heads, MLP channels) where an adapter names the projections. A last row
    ``family="*"`` stands for any other causal LM whose blocks discovery finds.
    """
    from ..structured import STRUCTURED_METHODS  # local: structured imports the engine

    names = STRUCTURED_METHODS.names()
    # a method with a ``families`` attribute (expert pruning: MoE families) applies to those only
    only = {m: tuple(getattr(STRUCTURED_METHODS.get(m), "families", ()) or ()) for m in names}
    # methods whose output always has per-block widths: where the remote-code loader has a class
    from ..structured.remote_code.modeling_prunekit import CLASSES as PER_BLOCK_FAMILIES

    for m in PER_BLOCK_ONLY:
        if m in only and not only[m]:
            only[m] = tuple(sorted(PER_BLOCK_FAMILIES))
    structured = [m for m in names if not only[m]]
    anywhere = [m for m in structured if m == "shortgpt"]  # block removal: any discovered blocks
    rows = []
    for fam in TESTED_FAMILIES:
        has = fam in ADAPTERS
        methods = sorted([*(structured if has else anywhere), *(m for m in names if fam in only[m])])
        rows.append({
            "family": fam, "blocks": "adapter" if has else "discovered", "unstructured": True,
            "nm": True, "moe": fam in MOE_FAMILIES, "structured": methods,
        })  # fmt: skip
    rows.append({"family": "*", "blocks": "discovered", "unstructured": True, "nm": True,
                 "moe": True, "structured": anywhere})  # fmt: skip
    return rows
