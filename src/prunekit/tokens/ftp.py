"""FTP: fine-grained token-wise pruning by token routing (Li et al., 2024, arXiv:2412.11494).

Per block ``b`` a tiny router ``r_b`` reads four low-dimensional features of each token and
the block computes only the ``⌈(1 - s_b)·n⌉`` best-scored tokens; the others skip it
(``h_out = h``, no query, key or value in that block)::

    φ_t   = [ t/(n-1),  z(log n·a_t),  z(log ‖h_t^b‖),  z(log(1 - cos(h_t^b, h_t^1))) ]
            position    attention the token receives at block 0 (dense)    norm    drift since block 0
    keep_b = {0} ∪ top_{⌈(1-s_b)n⌉ - 1}( r_b(φ_t) )          token 0 (the attention sink) always computes

``z`` standardises over the sequence, so routers rank tokens within their prompt. Training on
calibration text (dense forwards, model frozen) with two of the paper's three losses::

    L = BCE(r_b(φ), y_b)  +  λ · (mean σ(r_b(φ)) - (1 - s_b))²
    y_b,t = 1  iff  t ∈ top_{(1-s_b)n}  ‖f_b(h)_t - h_t‖ / ‖h_t‖        guide: the block's relative update

The paper's third loss (distillation through the routed model) and its genetic-algorithm
sparsity search are not implemented here: the schedule is uniform over blocks ``1..L-1``
(block 0 stays dense; it provides the attention feature), ``s_b = s·L/(L-1)``.

Baselines on the same hook (``route_method``): ``random-route`` (same schedule, random tokens),
``block-skip`` (ShortGPT-style whole blocks, ``blocks=[...]``) and ``attn-drop`` (LazyLLM-style:
the tokens that receive least attention at layer K-1 skip every block from K on).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from . import scorers as S
from .hook import TokenPatch, decoder_layers, text_config, topk_count

FORMAT = "prunekit-ftp-routers/1"
FEATURES = ("position", "attention_block0", "log_norm", "drift_since_block0")


@dataclass
class FTPConfig:
    sparsity: float = 0.3  # fraction of token-blocks skipped over the whole model
    hidden: int = 16  # router width
    steps: int = 300  # Adam steps per router (full batch over the calibration tokens)
    lr: float = 1e-2
    sparsity_weight: float = 1.0  # λ
    seed: int = 0


def _check_sparsity(s: Any, n_layers: int) -> float:
    hi = (n_layers - 1) / n_layers
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 <= float(s) < hi or float(s) == 0):
        raise ConfigError(f"sparsity={s!r} is outside [0, {hi:.3f}): the fraction of token-blocks skipped "
                          f"(block 0 stays dense), e.g. sparsity=0.3")  # fmt: skip
    return float(s)


def uniform_schedule(sparsity: float, n_layers: int) -> list[float]:
    """``s_b`` per block: 0 for block 0, ``s·L/(L-1)`` for the others (same total token-blocks)."""
    if sparsity == 0 or n_layers < 2:
        return [0.0] * n_layers
    return [0.0] + [sparsity * n_layers / (n_layers - 1)] * (n_layers - 1)


def _z(x: Tensor) -> Tensor:
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)


def features(h: Tensor, h1: Tensor, att0: Tensor) -> Tensor:
    """φ [B, n, 4] for block input ``h``, block-1 input ``h1`` and block-0 attention received ``att0``."""
    b, n, _ = h.shape
    pos = torch.arange(n, device=h.device, dtype=torch.float32).div(max(n - 1, 1)).expand(b, n)
    att = _z(torch.log(att0.float() * n + 1e-6))
    nrm = _z(torch.log(h.float().norm(dim=-1) + 1e-6))
    drift = _z(torch.log(1 - F.cosine_similarity(h.float(), h1.float(), dim=-1) + 1e-6))
    return torch.stack([pos, att, nrm, drift], -1)


class Router(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, phi: Tensor) -> Tensor:
        return self.net(phi).squeeze(-1)


class Routers(nn.Module):
    """One router per block (block 0: none), the schedule ``s_b`` and the model they were trained for."""

    def __init__(self, schedule: list[float], hidden: int = 16, signature: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.schedule = list(schedule)
        self.hidden = hidden
        self.signature = signature or {}
        self.routers = nn.ModuleList([Router(hidden) for _ in schedule])

    def save(self, fh: Any) -> None:
        from safetensors.torch import save

        meta = {"format": FORMAT, "schedule": json.dumps(self.schedule), "hidden": str(self.hidden),
                "features": json.dumps(FEATURES), "signature": json.dumps(self.signature)}  # fmt: skip
        fh.write(save({k: v.contiguous() for k, v in self.state_dict().items()}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "Routers":
        from safetensors import SafetensorError
        from safetensors.torch import load

        p = Path(path)
        if not p.is_file():
            raise DataError(f"routers file {path} does not exist: train one with `prunekit ftp-train MODEL --out FILE`")
        raw = p.read_bytes()
        try:
            from safetensors import safe_open

            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
            tensors = load(raw)
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"routers file {path} is not a safetensors file: {e}") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"routers file {path} is not a prunekit FTP routers file (format {meta.get('format')!r})")
        r = cls(json.loads(meta["schedule"]), int(meta["hidden"]), json.loads(meta["signature"]))
        r.load_state_dict(tensors)
        if model is not None:
            want, have = r.signature, model_signature(model)
            if want != have:
                diff = ", ".join(f"{k} {want.get(k)} vs {have.get(k)}" for k in sorted(set(want) | set(have))
                                 if want.get(k) != have.get(k))  # fmt: skip
                raise ConfigError(f"routers file {path} was trained for another model ({diff}): train routers "
                                  f"for this model with `prunekit ftp-train`")  # fmt: skip
        return r.eval()


def model_signature(model: nn.Module) -> dict[str, Any]:
    c = text_config(model)
    return {"model_type": c.model_type, "num_hidden_layers": int(c.num_hidden_layers),
            "hidden_size": int(c.hidden_size), "vocab_size": int(c.vocab_size)}  # fmt: skip


# --- routing methods on the hook ------------------------------------------------------------------
class Route:
    """Common part of the routing methods: per-forward block-0 attention and block-1 input."""

    mode = "route"
    name = "route"
    needs_features = False

    kv = "drop"  # "drop": a skipped token is no key/value in the block; "keep": its K/V (from its input) stay

    def __init__(self, model: nn.Module, n_layers: int) -> None:
        self.L = n_layers
        self.config = text_config(model)

    def observe(self, patch: TokenPatch, i: int, h: Tensor, kw: dict, prefill: bool) -> None:
        if not (prefill and self.needs_features):
            return
        if i == 0:
            x = patch.layers[0].input_layernorm(h)
            probs = S.attention_probs(patch.layers[0].self_attn, x, kw["position_embeddings"], kw.get("attention_mask"), self.config)  # fmt: skip
            patch.state["att0"] = S.attention_received(probs)
        elif i == 1:
            patch.state["h1"] = h

    def budget(self, i: int, n: int) -> int:
        return n

    def _keep(self, score: Tensor, k: int) -> Tensor | None:
        b, n = score.shape
        if k >= n:
            return None
        c = torch.ones(b, n, dtype=torch.bool, device=score.device)
        c[:, 0] = False  # the attention sink always computes
        return topk_count(score, c, max(k - 1, 0))


class FTP(Route):
    name = "ftp"
    needs_features = True

    def __init__(self, model: nn.Module, n_layers: int, routers: Routers) -> None:
        super().__init__(model, n_layers)
        if len(routers.schedule) != n_layers:
            raise ConfigError(f"the routers have {len(routers.schedule)} blocks, the model {n_layers}")
        self.routers, self.schedule = routers, routers.schedule

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        n = h.shape[1]
        k = n - round(self.schedule[i] * n)
        if k >= n:
            return None
        with torch.no_grad():
            phi = features(h, patch.state.get("h1", h), patch.state["att0"])
            score = self.routers.routers[i](phi.to(next(self.routers.parameters()).dtype))
        return self._keep(score, k)

    def describe(self) -> dict[str, Any]:
        return {"schedule": self.schedule}


class RandomRoute(Route):
    name = "random-route"

    def __init__(self, model: nn.Module, n_layers: int, schedule: list[float], seed: int = 0) -> None:
        super().__init__(model, n_layers)
        self.schedule, self.seed, self.calls = schedule, seed, 0

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        n = h.shape[1]
        k = n - round(self.schedule[i] * n)
        if k >= n:
            return None
        self.calls += 1
        g = torch.Generator().manual_seed(self.seed * 100003 + self.calls)
        return self._keep(torch.rand(h.shape[:2], generator=g).to(h.device), k)

    def describe(self) -> dict[str, Any]:
        return {"schedule": self.schedule}


class BlockSkip(Route):
    name = "block-skip"

    def __init__(self, model: nn.Module, n_layers: int, blocks: list[int]) -> None:
        super().__init__(model, n_layers)
        bad = [b for b in blocks if not (isinstance(b, int) and 0 <= b < n_layers)]
        if bad:
            raise ConfigError(f"blocks={bad} are outside the model: it has {n_layers} decoder layers (0..{n_layers - 1})")
        self.blocks = sorted(set(blocks))

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        if i not in self.blocks:
            return None
        return torch.zeros(h.shape[0], 0, dtype=torch.long, device=h.device)

    def describe(self) -> dict[str, Any]:
        return {"blocks": self.blocks}


class AttnDrop(Route):
    """LazyLLM-style: at layer K the ``keep`` share of tokens that receive most attention at K-1
    continue; the others skip every block from K on (their hidden state passes through)."""

    name = "attn-drop"

    def __init__(self, model: nn.Module, n_layers: int, keep: float, layer: int) -> None:
        super().__init__(model, n_layers)
        from .methods import _check_keep, check_layer

        self.keep = _check_keep(keep)
        self.layer = check_layer(layer, n_layers, 1, " (scores with the attention of layer K-1)")

    def observe(self, patch: TokenPatch, i: int, h: Tensor, kw: dict, prefill: bool) -> None:
        if prefill and i == self.layer - 1:
            x = patch.layers[i].input_layernorm(h)
            probs = S.attention_probs(patch.layers[i].self_attn, x, kw["position_embeddings"], kw.get("attention_mask"), self.config)  # fmt: skip
            patch.state["attn"] = S.attention_received(probs)

    def select(self, patch: TokenPatch, i: int, h: Tensor, kw: dict) -> Tensor | None:
        if i < self.layer:
            return None
        if i == self.layer:
            n = h.shape[1]
            patch.state["keep"] = self._keep(patch.state["attn"], max(1, round(self.keep * n)))
        return patch.state["keep"]

    def describe(self) -> dict[str, Any]:
        return {"keep": self.keep, "layer": self.layer}


def route_method(model: nn.Module, method: str, n_layers: int, *, routers: Routers | str | Path | None = None,
                 sparsity: float | None = None, blocks: list[int] | None = None, keep: float = 0.7,
                 layer: int = 2, seed: int = 0, kv: str = "drop") -> Route:  # fmt: skip
    """Build a routing method: ``ftp`` (``routers=`` a :class:`Routers` or a saved file),
    ``random-route`` (``sparsity=``), ``block-skip`` (``blocks=``), ``attn-drop`` (``keep=``, ``layer=``)."""
    if kv not in ("drop", "keep"):
        raise ConfigError(f"kv={kv!r} is not 'drop' (a skipped token is no key/value in the block) or 'keep'")
    r = _route_method(model, method, n_layers, routers, sparsity, blocks, keep, layer, seed)
    r.kv = kv
    return r


def _route_method(model, method, n_layers, routers, sparsity, blocks, keep, layer, seed) -> Route:
    if method == "ftp":
        if routers is None:
            raise ConfigError("method 'ftp' needs routers=: a file from `prunekit ftp-train` or prunekit.tokens.ftp.train(...)")
        r = routers if isinstance(routers, Routers) else Routers.load(routers, model)
        return FTP(model, n_layers, r)
    if method == "random-route":
        return RandomRoute(model, n_layers, uniform_schedule(_check_sparsity(sparsity if sparsity is not None else 0.3, n_layers), n_layers), seed)  # fmt: skip
    if method == "block-skip":
        if not blocks and blocks != []:
            raise ConfigError("method 'block-skip' needs blocks=[...]: the decoder blocks every token skips")
        return BlockSkip(model, n_layers, list(blocks))
    if method == "attn-drop":
        return AttnDrop(model, n_layers, keep, layer)
    raise ConfigError(f"unknown routing method {method!r}")


# --- training ---------------------------------------------------------------------------------------
@torch.no_grad()
def collect(model: nn.Module, ids: Tensor, schedule: list[float], progress: bool = False) -> list[tuple[Tensor, Tensor]]:
    """Dense forwards over ``ids`` [N, T]: per block, features φ [N·T, 4] and guide labels y [N·T]."""
    _, layers = decoder_layers(model)
    cfg = text_config(model)
    L = len(layers)
    feats: list[list[Tensor]] = [[] for _ in range(L)]
    labels: list[list[Tensor]] = [[] for _ in range(L)]
    state: dict[str, Any] = {}
    handles = []

    def pre(i):
        def hook(mod, args, kw):
            h = args[0] if args else kw["hidden_states"]
            state["in"] = h
            if i == 0:
                x = mod.input_layernorm(h)
                state["att0"] = S.attention_received(S.attention_probs(mod.self_attn, x, kw["position_embeddings"], kw.get("attention_mask"), cfg))  # fmt: skip
            if i == 1:
                state["h1"] = h

        return hook

    def post(i):
        def hook(mod, args, kw, out):
            h = state["in"]
            y = out[0] if isinstance(out, tuple) else out
            if schedule[i] <= 0:
                return
            n = h.shape[1]
            rel = (y - h).float().norm(dim=-1) / (h.float().norm(dim=-1) + 1e-6)
            k = n - round(schedule[i] * n)
            lab = torch.zeros_like(rel)
            lab.scatter_(1, rel.topk(k, dim=1).indices, 1.0)
            feats[i].append(features(h, state.get("h1", h), state["att0"]).reshape(-1, len(FEATURES)))
            labels[i].append(lab.reshape(-1))

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    try:
        it = range(ids.shape[0])
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="ftp: dense forwards", unit="sample", dynamic_ncols=True)
        for j in it:
            model(input_ids=ids[j : j + 1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [(torch.cat(f) if f else torch.empty(0, len(FEATURES)), torch.cat(y) if y else torch.empty(0))
            for f, y in zip(feats, labels)]  # fmt: skip


def train(model: nn.Module, ids: Tensor, config: FTPConfig | None = None, progress: bool = False) -> Routers:
    """Train one router per block on calibration ids [N, T] (model frozen); returns :class:`Routers`."""
    cfg = config or FTPConfig()
    _, layers = decoder_layers(model)
    L = len(layers)
    s = _check_sparsity(cfg.sparsity, L)
    if ids.dim() != 2 or ids.shape[1] < 8:
        raise DataError(f"calibration ids must be [nsamples, seqlen >= 8], got {list(ids.shape)}")
    schedule = uniform_schedule(s, L)
    data = collect(model, ids, schedule, progress)
    torch.manual_seed(cfg.seed)
    routers = Routers(schedule, cfg.hidden, model_signature(model))
    it = range(L)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="ftp: routers", unit="block", dynamic_ncols=True)
    for b in it:
        phi, y = data[b]
        if schedule[b] <= 0 or not len(y):
            continue
        r = routers.routers[b]
        opt = torch.optim.Adam(r.parameters(), lr=cfg.lr)
        target = 1.0 - schedule[b]
        with torch.enable_grad():
            for _ in range(cfg.steps):
                z = r(phi)
                loss = F.binary_cross_entropy_with_logits(z, y) + cfg.sparsity_weight * (torch.sigmoid(z).mean() - target) ** 2
                opt.zero_grad()
                loss.backward()
                opt.step()
    return routers.eval()


def describe_config(cfg: FTPConfig) -> dict[str, Any]:
    return asdict(cfg)


def shortgpt_blocks(model: nn.Module, ids: Tensor, n_skip: int) -> list[int]:
    """The ``n_skip`` blocks with the lowest Block Influence on ``ids`` (ShortGPT, arXiv:2403.03853)."""
    from ..models.discovery import engine_adapter
    from ..structured.shortgpt import block_influence

    bi = block_influence(model, engine_adapter(model), ids)
    return sorted(sorted(range(len(bi)), key=lambda i: bi[i])[:n_skip])


def token_block_sparsity(schedule: list[float], n: int) -> float:
    """The token-block sparsity a schedule gives on an ``n``-token prompt (rounding included)."""
    return sum(round(s * n) for s in schedule) / (len(schedule) * n) if schedule else 0.0


__all__ = ["FEATURES", "FTPConfig", "ROUTERS_FILE", "Router", "Routers", "attach_saved", "collect", "features", "model_signature", "route_method",
           "routing_of", "save_routed", "shortgpt_blocks", "token_block_sparsity", "train", "uniform_schedule"]  # fmt: skip


# --- saved folder -------------------------------------------------------------------------------------
ROUTERS_FILE = "ftp_routers.safetensors"


def save_routed(model: nn.Module, tokenizer: Any, routers: Routers, out: str | Path, meta: dict[str, Any] | None = None,
                *, kv: str = "drop", overwrite: bool = False) -> Path:  # fmt: skip
    """Write a normal Hugging Face folder for ``model`` plus ``ftp_routers.safetensors`` and a
    ``prunekit.json`` key ``"token_routing"``; :func:`prunekit.load` re-attaches the routing.

    The folder is written into a temp folder beside ``out`` and renamed into place (nothing is
    left half-written). The model itself is saved unpatched (routing is an inference-time hook).

    Raises:
        ConfigError: ``routers`` were trained for another model, or ``kv`` is not drop/keep.
        OutputError: ``out`` is not writable / not empty (without ``overwrite``) / the source folder.
    """
    from ..export.hf import OutputSlot, model_bytes, model_source_dirs, write_hf_folder

    if not isinstance(routers, Routers):
        raise ConfigError(f"routers must be prunekit.tokens.ftp.Routers (from ftp.train or Routers.load), not {type(routers).__name__}")
    if kv not in ("drop", "keep"):
        raise ConfigError(f"kv={kv!r} is not 'drop' (a skipped token is no key/value in the block) or 'keep'")
    have = model_signature(model)
    if routers.signature and routers.signature != have:
        raise ConfigError(f"these routers were trained for another model ({routers.signature} vs {have}): "
                          f"train routers for this model with prunekit.tokens.ftp.train")  # fmt: skip
    info = {"method": "ftp", "file": ROUTERS_FILE, "kv": kv, "sparsity": sum(routers.schedule) / max(len(routers.schedule), 1),
            "schedule": routers.schedule}  # fmt: skip
    meta = {**(meta or {}), "token_routing": info}

    def write(tmp: Path) -> None:
        write_hf_folder(model, tokenizer, tmp, meta)
        with open(tmp / ROUTERS_FILE, "wb") as fh:
            routers.save(fh)

    with OutputSlot(out, overwrite, protect=model_source_dirs(model), need_bytes=model_bytes(model)) as slot:
        return slot.commit(write)


def routing_of(folder: str | Path) -> dict[str, Any] | None:
    """The ``token_routing`` entry of a saved folder's ``prunekit.json`` (``None`` if it has none)."""
    p = Path(folder) / "prunekit.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    info = meta.get("token_routing") if isinstance(meta, dict) else None
    return info if isinstance(info, dict) else None


def attach_saved(model: nn.Module, folder: str | Path) -> TokenPatch | None:
    """Re-attach the routing a :func:`save_routed` folder records (no-op for other folders)."""
    info = routing_of(folder)
    if info is None:
        return None
    if info.get("method") != "ftp" or not isinstance(info.get("file"), str):
        raise DataError(f"{folder}/prunekit.json: token_routing {info!r} is not an FTP routing entry "
                        f"(method 'ftp', file ...): re-save the folder with prunekit.tokens.ftp.save_routed")  # fmt: skip
    from .api import patch

    return patch(model, method="ftp", routers=Path(folder) / info["file"], kv=info.get("kv", "drop"))
