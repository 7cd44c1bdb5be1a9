"""Shortening methods (prefill, at decoder layer ``K``): FastV, Recoverable Compression, random.

FastV (Chen et al., 2024, arXiv:2403.06764), the baseline::

    s_j = mean_heads mean_i A^(K-1)[i, j]          attention token j receives at layer K-1
    keep = non-candidates ∪ top_{⌈R·N⌉}(s over candidates)      layers K..L-1 see only `keep`

Candidates are the image-token span (LLaVA-style models: ``input_ids == image_token_id``),
or, for a text-only LM, every token but the first (the attention sink) and the last.

Recoverable Compression (Chen et al., 2024, arXiv:2409.01179), visual tokens only::

    a_p   = CLS attention to patch p at the vision tower's feature layer
    I     = {p : a_p > Q3(a) + 1.5·IQR(a)}                   important: CLS-attention outliers
    R     = top by max_t cos(v_p, e_t) over the rest          text-guided recovery (t: prompt text)
    keep  = top_{⌈R·N⌉} of I (by a) then R;  the rest are merged into their most similar kept token

Here the budget is the fixed ``keep`` fraction (the paper's outlier counts are adaptive) so every
method is compared at the same number of visual tokens; the text embedding is the LLM's input
embedding of the prompt's text tokens (``layer=0``, after the projector).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from . import scorers as S
from .hook import TokenPatch, take, text_config, topk_keep

RECOVERIES = ("drop", "merge")
TOKEN_SETS = ("auto", "image", "all")


@dataclass
class TokenPruneConfig:
    """What ``prunekit.tokens.patch`` does; checked once by :func:`check` against the model."""

    method: str = "fastv"  # fastv | recoverable | random | vflowopt | coarse-to-fine
    keep: float = 0.25  # fraction of the candidate tokens kept, in (0, 1]
    layer: int | None = None  # first layer that sees the kept tokens (fastv: 2, recoverable: 0)
    recovery: str | None = None  # drop | merge (default: drop; recoverable: merge)
    tokens: str = "auto"  # auto: the image span when the model has an image token, else all | image | all
    query: str = "all"  # fastv: attention from all queries or only the last one
    image_token_id: int | None = None  # default: the model's config.image_token_id
    seed: int = 0  # random
    recycle: float = 0.25  # vflowopt: fraction of the kept budget that carries recycled aggregates
    region: int = 4  # coarse-to-fine: side of a coarse region (tokens)


def _check_keep(keep: Any) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (0 < float(keep) <= 1):
        raise ConfigError(f"keep={keep!r} is outside (0, 1]: give the fraction of candidate tokens kept, e.g. keep=0.25")
    return float(keep)


def check_layer(layer: Any, n_layers: int, lo: int = 0, why: str = "") -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not lo <= layer < n_layers:
        raise ConfigError(f"layer={layer!r} is outside the model: it has {n_layers} decoder layers, so give "
                          f"{lo}..{n_layers - 1}{why}")  # fmt: skip
    return layer


class Shorten:
    """Common part: candidates (image span or all but first/last), recovery (drop or merge)."""

    mode = "shorten"
    name = "shorten"
    default_layer = 2
    needs_image = False

    def __init__(self, model: nn.Module, cfg: TokenPruneConfig, n_layers: int) -> None:
        self.keep = _check_keep(cfg.keep)
        if cfg.tokens not in TOKEN_SETS:
            raise ConfigError(f"tokens={cfg.tokens!r} is not one of {', '.join(TOKEN_SETS)}")
        rec = cfg.recovery or ("merge" if self.name == "recoverable" else "drop")
        if rec not in RECOVERIES:
            raise ConfigError(f"recovery={rec!r} is not one of {', '.join(RECOVERIES)}")
        self.recovery = rec
        lo = 1 if self.name in ("fastv", "vflowopt") else 0
        why = " (FastV scores with the attention of layer K-1)" if lo else ""
        self.layer = check_layer(self.default_layer if cfg.layer is None else cfg.layer, n_layers, lo, why)
        tid = cfg.image_token_id if cfg.image_token_id is not None else getattr(model.config, "image_token_id", None)
        if cfg.tokens == "image" or self.needs_image:
            if tid is None:
                raise ConfigError(f"{type(model).__name__} has no image-token span (no config.image_token_id): the "
                                  f"visual method {self.name!r} needs a LLaVA-style model or image_token_id=ID")  # fmt: skip
            self.visual = True
        else:
            self.visual = cfg.tokens == "auto" and tid is not None
        self.image_token_id = tid
        self.config = text_config(model)
        self.seed = cfg.seed

    def candidates(self, patch: TokenPatch, h: Tensor) -> Tensor:
        b, n = h.shape[:2]
        if not self.visual:
            c = torch.ones(b, n, dtype=torch.bool, device=h.device)
            c[:, 0] = c[:, -1] = False
            return c
        ids = patch.input_ids
        if ids is None or ids.shape[-1] != n:
            raise DataError(f"{self.name}: the forward got no input_ids of the prompt's length (inputs_embeds?): the "
                            f"image-token span is found from input_ids == {self.image_token_id}")  # fmt: skip
        c = (ids == self.image_token_id).to(h.device)
        if not bool(c.any()):
            raise DataError(f"{self.name}: the prompt has no image token (id {self.image_token_id}): a visual method "
                            f"prunes the image-token span; put the image placeholder in the prompt")  # fmt: skip
        return c

    def all_kept(self, c: Tensor) -> bool:
        n_c = int(c.sum(1).max())
        return max(1, round(self.keep * n_c)) >= n_c

    def recover(self, patch: TokenPatch, h: Tensor, keep: Tensor, drop: Tensor) -> Tensor:
        kept = take(h, keep)
        if self.recovery == "drop" or not drop.shape[1]:
            return kept
        # merge: each dropped token is averaged into its most similar kept candidate (size-weighted)
        c = patch.state["candidates"]
        dropped = take(h, drop)
        sim = F.normalize(dropped.float(), dim=-1) @ F.normalize(kept.float(), dim=-1).transpose(1, 2)
        sim = sim.masked_fill(~take(c, keep)[:, None, :], float("-inf"))
        j = sim.argmax(-1)  # [B, r]
        sums = kept.float().clone().scatter_add_(1, j[..., None].expand(-1, -1, h.shape[-1]), dropped.float())
        cnt = torch.ones(kept.shape[:2], device=h.device).scatter_add_(1, j, torch.ones(j.shape, device=h.device))
        return (sums / cnt[..., None]).to(h.dtype)

    def describe(self) -> dict[str, Any]:
        return {"keep": self.keep, "layer": self.layer, "recovery": self.recovery,
                "tokens": "image" if self.visual else "all-but-first-and-last"}  # fmt: skip


class FastV(Shorten):
    name = "fastv"

    def __init__(self, model: nn.Module, cfg: TokenPruneConfig, n_layers: int) -> None:
        super().__init__(model, cfg, n_layers)
        if cfg.query not in ("all", "last"):
            raise ConfigError(f"query={cfg.query!r} is not 'all' or 'last'")
        self.query = cfg.query

    def observe(self, patch: TokenPatch, i: int, h: Tensor, kw: dict, prefill: bool) -> None:
        if prefill and i == self.layer - 1:
            x = patch.layers[i].input_layernorm(h)
            patch.state["attn_in"] = (x, kw.get("position_embeddings"), kw.get("attention_mask"))

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        c = patch.state["candidates"] = self.candidates(patch, h)
        if self.all_kept(c):
            return None
        x, pe, mask = patch.state.pop("attn_in")
        probs = S.attention_probs(patch.layers[i - 1].self_attn, x, pe, mask, self.config)
        return topk_keep(S.attention_received(probs, self.query), c, self.keep)


class RandomDrop(Shorten):
    name = "random"

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        c = patch.state["candidates"] = self.candidates(patch, h)
        if self.all_kept(c):
            return None
        g = torch.Generator().manual_seed(self.seed + patch.prefills)
        return topk_keep(torch.rand(c.shape, generator=g).to(h.device), c, self.keep)


class Recoverable(Shorten):
    name = "recoverable"
    default_layer = 0
    needs_image = True

    def __init__(self, model: nn.Module, cfg: TokenPruneConfig, n_layers: int) -> None:
        super().__init__(model, cfg, n_layers)
        self.vision_attn, self.drop_cls = _vision_feature_attention(model)

    def hooks(self, patch: TokenPatch) -> list[Any]:
        def grab(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = kwargs.get("hidden_states", args[0] if args else None)
            a = S.cls_attention(mod, x)  # [images, 1+P]
            patch.state["vision:cls"] = a[:, 1:] if self.drop_cls else a

        return [self.vision_attn.register_forward_pre_hook(grab, with_kwargs=True)]

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        c = patch.state["candidates"] = self.candidates(patch, h)
        if self.all_kept(c):
            return None
        cls = patch.state.pop("vision:cls", None)
        if cls is None or cls.numel() != int(c.sum()):
            raise DataError("recoverable: the image features of this forward do not match the image-token span "
                            "(no pixel_values, or cached image features?): pass pixel_values with the prompt")  # fmt: skip
        a = torch.zeros(c.shape, device=h.device)
        a[c] = cls.reshape(-1).to(h.device).float()
        important = S.iqr_outliers(a, c)
        sim = S.text_similarity(h, c)
        score = torch.where(important, 10.0 + a, sim)  # outliers first (by CLS attention), then text-guided recovery
        patch.state["recoverable"] = {"outliers": int(important.sum())}
        return topk_keep(score, c, self.keep)


def _vision_feature_attention(model: nn.Module) -> tuple[nn.Module, bool]:
    """The attention of the vision layer that writes the LLaVA feature layer, and whether CLS is dropped."""
    cfg = model.config
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    layers = None
    if tower is not None:
        for name, m in tower.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) and hasattr(m[0], "self_attn"):
                layers = m
                break
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no vision tower with attention layers: 'recoverable' needs a "
                          f"LLaVA-style model (vision_tower + projector + LM)")  # fmt: skip
    fl = getattr(cfg, "vision_feature_layer", -2)
    if not isinstance(fl, int):
        raise ConfigError(f"vision_feature_layer={fl!r}: 'recoverable' supports one feature layer")
    strategy = getattr(cfg, "vision_feature_select_strategy", "default")
    hs = fl % (len(layers) + 1)  # hidden_states[hs] is the output of layers[hs - 1]
    if hs == 0:
        raise ConfigError("vision_feature_layer selects the patch embeddings: no attention to score with")
    return layers[hs - 1].self_attn, strategy == "default"


METHODS: dict[str, type[Shorten]] = {"fastv": FastV, "recoverable": Recoverable, "random": RandomDrop}

from .vlm import CoarseToFine, VFlowOpt  # noqa: E402  (they build on the classes above)

METHODS.update({"vflowopt": VFlowOpt, "coarse-to-fine": CoarseToFine})
