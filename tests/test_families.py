"""Every family, dense and MoE: tiny random models built in code (issue 11).

Unstructured and N:M pruning must work on any transformers causal LM whose decoder blocks
discovery finds: exact sparsity on every targeted matrix (GPT-2's Conv1D and fused expert slices
in the [out, in] orientation), untouched weights at sparsity 0, bf16 kept bf16, save → plain
``from_pretrained`` → identical logits, and Wanda masks equal to a re-implementation from hooks
on the dense model.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.engine import Stat, capture_block_inputs, run_layerwise, weight_of
from prunekit.engine.targets import ExpertSlice
from prunekit.errors import ConfigError
from prunekit.models.discovery import DiscoveredBlocks, discover_blocks, engine_adapter, family_support
from prunekit.structured import surgery

VOCAB, SEQ = 384, 32  # SEQ > sliding_window below, so sliding-window masks matter
_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
_GQA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, **_IDS)  # fmt: skip
_MOE = dict(num_experts_per_tok=2, **_GQA)

# model_type -> (config class, model class, config kwargs, expected blocks path)
FAMILIES: dict[str, tuple[str, str, dict, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=16, tie_word_embeddings=False, **_GQA), "model.layers"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(head_dim=16, sliding_window=16, tie_word_embeddings=False, **_GQA), "model.layers"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, **_GQA), "model.layers"),  # qkv bias
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, tie_word_embeddings=True, **_GQA), "model.layers"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=32, **_GQA), "model.layers"),  # head_dim != 64/4
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=32, sliding_window=16, attn_logit_softcapping=50.0,
                                                           final_logit_softcapping=30.0, **_GQA), "model.layers"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=32, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0, **_GQA), "model.layers"),  # per-layer-type rotary and masks
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(tie_word_embeddings=False, **_GQA), "model.layers"),  # fused qkv, gate_up
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, **_IDS), "transformer.h"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                             num_attention_heads=4, max_position_embeddings=512, **_IDS), "gpt_neox.layers"),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=512, word_embed_proj_dim=64, **_IDS), "model.decoder.layers"),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                         alibi=True, **_IDS), "transformer.h"),  # fused query_key_value
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(head_dim=16, num_local_experts=4, tie_word_embeddings=False, **_MOE), "model.layers"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(num_experts=4, moe_intermediate_size=32,
                                                                shared_expert_intermediate_size=64, **_MOE), "model.layers"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(head_dim=16, num_experts=4, moe_intermediate_size=32, **_MOE), "model.layers"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, **_MOE), "model.layers"),
    # experts stored transposed, interleaved gate/up, with biases and a clamped SwiGLU
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(num_local_experts=4, head_dim=16, sliding_window=16,
                                                          layer_types=["sliding_attention", "full_attention"], **_MOE), "model.layers"),
    # MLA attention, a dense first block, routed + shared experts, grouped top-k routing
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        n_routed_experts=4, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1,
        q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **_MOE), "model.layers"),
}  # fmt: skip
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3")
LINEAR_EXPERTS = [f for f in MOE if f != "gpt_oss"]  # eager experts call F.linear (golden hooks)
ALL = list(FAMILIES)


def make(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, attn: str | None = None,
         layers: int | None = None, **over) -> nn.Module:  # fmt: skip
    """A tiny random model of ``family``; ``layers`` blocks (per-layer lists repeated to fit)."""
    import transformers

    cfg_cls, model_cls, kw, _ = FAMILIES[family]
    kw = dict(kw)
    if layers is not None:
        kw["n_layer" if "n_layer" in kw else "num_hidden_layers"] = layers
        if "layer_types" in kw:
            kw["layer_types"] = [kw["layer_types"][i % len(kw["layer_types"])] for i in range(layers)]
    kw.update(over)
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(vocab_size=VOCAB, **kw)
    if attn:
        cfg._attn_implementation = attn
    model = getattr(transformers, model_cls)(cfg).eval()
    assert model.config.model_type == family
    return model.to(dtype)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, SEQ), generator=torch.Generator().manual_seed(0))


def _prune(model, ids, method="wanda", pattern="unstructured", sparsity=None, idle="dense", **kw):
    cfg = pk.PruneConfig(method=method, pattern=pattern, sparsity=sparsity, **kw)
    return pk.prune_(model, cfg, ids, progress=False, report_tokens=64, idle_experts=idle)


def _matrices(model) -> dict[str, torch.Tensor]:
    return {n: weight_of(m).detach().clone() for n, m in pk.target_linears(model, pk.PruneConfig()).items()}


@pytest.mark.parametrize("family,attn", [(f, None) for f in ALL] + [("gpt2", "eager"), ("mistral", "eager")])
def test_blocks_and_kwargs_replay_the_model(family, attn, ids):
    """Blocks are found (adapter or discovery) and replaying them with the captured per-block
    arguments (rotary tables, sliding/full masks, alibi, GPT-2's positional mask) reproduces the
    model's own last-block output."""
    model = make(family, attn=attn)
    loc = engine_adapter(model)
    assert loc.blocks_path == FAMILIES[family][3] and len(loc.blocks(model)) == 2
    assert isinstance(loc, DiscoveredBlocks) == (family not in pk.models.adapters.ADAPTERS)
    assert discover_blocks(model).blocks_path == loc.blocks_path  # discovery agrees with adapters
    seen = {}
    last = loc.blocks(model)[-1]

    def grab(_m, _a, o) -> None:
        seen["o"] = o[0] if isinstance(o, tuple) else o

    h = last.register_forward_hook(grab)
    model(input_ids=ids[:4])
    h.remove()
    (inp,) = capture_block_inputs(model, loc, ids[:4], batch_size=4)
    x = inp.hidden
    for i, blk in enumerate(loc.blocks(model)):
        out = blk(x, **inp.kwargs_for(i))
        x = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(x, seen["o"], rtol=1e-5, atol=1e-5)


class _TwiceLM(nn.Module):
    """A layer loop that calls block 0 twice: per-block capture must fall back to block 0's
    arguments for every block, and the engine still runs."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2))

    def forward(self, input_ids, use_cache=False):
        h = self.layers[0](self.emb(input_ids))
        for blk in self.layers:
            h = blk(h)
        return h


def test_unusual_layer_loop_falls_back_to_block0_arguments(ids):
    model = _TwiceLM()
    loc = discover_blocks(model)
    caps = capture_block_inputs(model, loc, ids, batch_size=4)
    assert len(caps) == 2 and all(c.block_kwargs == [] for c in caps)
    torch.testing.assert_close(caps[0].hidden, model.emb(ids[:4]))
    report = _prune(model, ids, "wanda", "2:4")
    assert [lr.sparsity for lr in report.layers] == [0.5, 0.5]


def _check_nm(W: torch.Tensor, name: str) -> None:
    groups = (W.reshape(W.shape[0], -1, 4) == 0).sum(-1)
    assert (groups == 2).all(), name


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "2:4")])
def test_exact_sparsity_on_every_target(family, method, pattern, ids):
    model = make(family)
    report = _prune(model, ids, method, pattern)
    mats = _matrices(model)
    assert {lr.name for lr in report.layers} == set(mats)
    n_experts = sum(isinstance(m, ExpertSlice) for m in pk.target_linears(model, pk.PruneConfig()).values())
    assert (n_experts > 0) == (family in MOE)
    for name, W in mats.items():
        assert (W == 0).float().mean().item() == 0.5, name
        if pattern == "2:4":
            _check_nm(W, name)
    assert report.sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("family", ALL)
def test_bf16_stays_bf16_and_sparsity_zero_is_a_no_op(family, ids):
    model = make(family, torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _prune(model, ids, "wanda", "unstructured", sparsity=0.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    _prune(model, ids, "sparsegpt", "2:4")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for name, W in _matrices(model).items():
        _check_nm(W, name)


@pytest.mark.parametrize("family", ALL)
def test_save_reload_gives_identical_logits(family, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make(family)
    _prune(model, ids, "wanda", "2:4")
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (back.get_output_embeddings().weight is back.get_input_embeddings().weight) == tied
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids[:2]).logits, model(input_ids=ids[:2]).logits, rtol=0, atol=0)


@contextlib.contextmanager
def _recording_linear(calls: list):
    """Record (input, weight) of every ``torch.nn.functional.linear`` call (the eager experts
    path calls it once per expert projection)."""
    real = torch.nn.functional.linear

    def rec(x, w, b=None):
        calls.append((x.detach(), w))
        return real(x, w, b)

    torch.nn.functional.linear = rec
    try:
        yield
    finally:
        torch.nn.functional.linear = real


def _dense_sqnorms(model, ids) -> dict[str, torch.Tensor]:
    """Σ x_j² of each target's input from one plain forward of the dense model: pre-hooks on
    Linear/Conv1D modules, and for fused experts the inputs the eager implementation feeds to
    each expert's slice (matched by storage)."""
    targets = pk.target_linears(model, pk.PruneConfig())
    out: dict[str, torch.Tensor] = {}
    hooks = []
    for n, m in targets.items():
        if not isinstance(m, ExpertSlice):
            def pre(_m, a, n=n):
                x = a[0].reshape(-1, a[0].shape[-1]).float().pow(2).sum(0)
                out[n] = out[n] + x if n in out else x
            hooks.append(m.register_forward_pre_hook(pre))
    by_ptr = {getattr(m.module, m.param)[m.expert].data_ptr(): n for n, m in targets.items() if isinstance(m, ExpertSlice)}
    calls: list = []
    with _recording_linear(calls), torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    for x, w in calls:
        n = by_ptr.get(w.data_ptr())
        if n is not None:
            s = x.reshape(-1, x.shape[-1]).float().pow(2).sum(0)
            out[n] = out[n] + s if n in out else s
    return out


def _eager_experts(model) -> None:
    if hasattr(model.config, "_experts_implementation"):
        model.config._experts_implementation = "eager"


@pytest.mark.parametrize("family", [f for f in ALL if f not in MOE or f in LINEAR_EXPERTS])
def test_wanda_mask_equals_reimplementation_from_hooks(family, ids):
    """Wanda (Sun et al. 2024): keep the top half of |W_ij|·‖X_j‖₂ in each output row; ‖X_j‖ from
    hooks on the dense model (propagate='dense', so every block sees dense inputs)."""
    model = make(family)
    _eager_experts(model)
    norms = _dense_sqnorms(model, ids)
    dense = _matrices(model)
    assert set(norms) == set(dense)  # every expert received tokens in this calibration set
    _prune(model, ids, "wanda", "unstructured", sparsity=0.5, propagate="dense")
    for name, W in _matrices(model).items():
        score = dense[name].abs() * norms[name].sqrt()[None, :]
        keep = torch.zeros_like(score, dtype=torch.bool)
        keep.scatter_(1, score.argsort(dim=1, descending=True)[:, : score.shape[1] // 2], True)
        assert torch.equal(W != 0, keep), name


@pytest.mark.parametrize("family", MOE)
def test_engine_expert_inputs_rebuild_the_experts_output(family, ids):
    """The engine's per-expert view (routed tokens, ``[out, in]`` slices, recomputed down_proj
    inputs) reproduces the experts module's own output: Σ_e w_te · (W_down,e · x_down,e)."""
    from prunekit.engine.stats import _down_input, _expert_groups

    model = make(family)
    rec = {}
    slices = {n: s for n, s in pk.target_linears(model, pk.PruneConfig()).items() if isinstance(s, ExpertSlice)}
    first = next(iter(slices)).rsplit(".", 2)[0]  # e.g. model.layers.1.mlp.experts (first MoE block)
    experts = model.get_submodule(first)
    slices = {n: s for n, s in slices.items() if n.startswith(first + ".")}
    h = experts.register_forward_hook(lambda m, a, o: rec.update(args=a, out=o))
    with torch.no_grad():
        model(input_ids=ids[:2])
    h.remove()
    x, index, weights = rec["args"]
    ref = torch.zeros_like(rec["out"])
    with torch.no_grad():
        for e, tok in enumerate(_expert_groups(index, len(slices) // 2)):
            down_in = _down_input(experts, x[tok], e)
            y = down_in @ weight_of(slices[f"{first}.{e}.down_proj"]).T
            if getattr(experts, "has_bias", False):
                y = y + experts.down_proj_bias[e]
            w = (weights[tok] * (index[tok] == e)).sum(-1, keepdim=True)
            ref.index_add_(0, tok, y * w)
    torch.testing.assert_close(ref, rec["out"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", LINEAR_EXPERTS)
def test_expert_statistics_are_those_of_routed_tokens_only(family, ids):
    """Each expert slice's statistics come from the tokens routed to it (the eager experts
    forward's own per-expert inputs), and the report lists tokens per expert."""
    model = make(family)
    _eager_experts(model)
    norms = _dense_sqnorms(model, ids)
    loc = engine_adapter(model)
    got: dict[str, tuple[int, torch.Tensor]] = {}

    def on_block(i, targets, stats):
        got.update({n: (s.num_tokens, s[Stat.INPUT_SQNORM]) for n, s in stats.items() if isinstance(targets[n], ExpertSlice)})

    run_layerwise(model, loc, ids, needs={Stat.INPUT_SQNORM}, select=lambda n, m: True,
                  on_block=on_block, propagate="dense")  # fmt: skip
    assert got and set(got) <= set(norms)
    k, T = model.config.num_experts_per_tok, ids.numel()
    moe_blocks = sorted({n.split(".")[2] for n in got})
    assert moe_blocks
    for b in moe_blocks:
        gu = [n for n in got if f"layers.{b}." in n and n.endswith("gate_up_proj")]
        assert len(gu) == 4 and sum(got[n][0] for n in gu) == k * T  # each token reaches k experts
        assert all(0 < got[n][0] < T for n in gu)  # routed subsets, not all tokens
    for n, (_, sq) in got.items():
        torch.testing.assert_close(sq, norms[n], rtol=1e-4, atol=1e-5)
    report = _prune(make(family), ids, "wanda", "2:4")
    infos = [lr.info["tokens"] for lr in report.layers if lr.name.endswith("gate_up_proj")]
    assert len(infos) == len(moe_blocks) * 4 and sum(infos) == len(moe_blocks) * k * T


def test_expert_report_sample_is_shared_out_across_experts(ids):
    model = make("mixtral")
    rows: dict[str, int] = {}

    def on_block(i, targets, stats):
        rows.update({n: s[Stat.SAMPLE].shape[0] for n, s in stats.items()})

    run_layerwise(model, engine_adapter(model), ids, needs={Stat.INPUT_SQNORM}, select=lambda n, m: True,
                  on_block=on_block, sample_tokens=64)  # fmt: skip
    assert rows["model.layers.0.self_attn.q_proj"] == 64
    experts = [r for n, r in rows.items() if ".experts." in n]
    assert len(experts) == 16 and all(r == 16 for r in experts)  # 64 / 4 experts


def _starve_expert(model, e: int) -> list:
    """Route no token to expert ``e`` (tokens it would get go to expert e - 1 instead)."""
    hooks = []
    for mod in model.modules():
        if hasattr(mod, "experts") and hasattr(mod, "gate"):
            def fix(_m, _a, out):
                logits, scores, idx = out
                return logits, scores, torch.where(idx == e, torch.full_like(idx, e - 1), idx)
            hooks.append(mod.gate.register_forward_hook(fix))
    return hooks


@pytest.mark.parametrize("idle", ["dense", "magnitude"])
def test_idle_expert_is_reported_and_handled_as_asked(idle, ids):
    model = make("mixtral")
    _starve_expert(model, 3)
    before = _matrices(model)
    router = model.model.layers[0].mlp.gate.weight.detach().clone()
    report = _prune(model, ids, "wanda", "unstructured", idle=idle)
    after = _matrices(model)
    idle_names = [n for n in after if ".experts.3." in n]
    assert len(idle_names) == 4 and report.settings["idle_experts"] == idle
    assert any(note.startswith("4 layers received no calibration token") for note in report.notes)
    for n in idle_names:
        lr = next(lr for lr in report.layers if lr.name == n)
        assert lr.info == {"tokens": 0, "idle": idle}
        if idle == "dense":
            assert torch.equal(after[n], before[n]), n
        else:
            assert (after[n] == 0).float().mean().item() == 0.5, n
    for n in after.keys() - set(idle_names):
        assert (after[n] == 0).float().mean().item() == 0.5, n
    assert torch.equal(model.model.layers[0].mlp.gate.weight, router)  # routers never pruned


class _ListMoE(nn.Module):
    """An older MoE layout: a ModuleList of per-expert MLPs beside a Linear router (top-1)."""

    def __init__(self, d=16, n=4):
        super().__init__()
        self.gate = nn.Linear(d, n, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d)) for _ in range(n))

    def forward(self, h, **_kw):
        choice = self.gate(h).argmax(-1).clamp(max=len(self.experts) - 2)  # the last expert idles
        out = torch.zeros_like(h)
        for e, mlp in enumerate(self.experts):
            sel = choice == e
            if sel.any():
                out[sel] = mlp(h[sel])
        return h + out


class _ListMoELM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 16)
        self.layers = nn.ModuleList(_ListMoE() for _ in range(2))

    def forward(self, input_ids, use_cache=False):
        h = self.emb(input_ids)
        for blk in self.layers:
            h = blk(h)
        return h


def test_list_of_expert_linears_gets_routed_statistics_and_idle_handling(ids):
    model = _ListMoELM()
    seen: dict[str, int] = {}
    for i, blk in enumerate(model.layers):
        for e, mlp in enumerate(blk.experts):
            mlp[0].register_forward_pre_hook(lambda m, a, k=f"layers.{i}.experts.{e}.0": seen.__setitem__(k, seen.get(k, 0) + a[0].shape[0]))
    report = _prune(model, ids, "wanda", "2:4")
    by = {lr.name: lr for lr in report.layers}
    assert not any(n.endswith(".gate") for n in by)  # the router is kept
    for i in range(2):
        idle = by[f"layers.{i}.experts.3.0"]
        assert idle.info == {"tokens": 0, "idle": "dense"} and idle.sparsity == 0.0
        for e in range(3):
            lr = by[f"layers.{i}.experts.{e}.0"]
            assert lr.sparsity == 0.5 and lr.info["tokens"] == seen.get(f"layers.{i}.experts.{e}.0", 0) // 2 > 0
    assert sum(by[f"layers.0.experts.{e}.0"].info["tokens"] for e in range(3)) == ids.numel()


def test_bad_idle_experts_setting_is_one_line(ids):
    with pytest.raises(ConfigError, match="idle_experts='often'"):
        _prune(make("mixtral"), ids, idle="often")


def test_shared_expert_gate_is_not_a_target_but_the_shared_expert_is():
    names = set(pk.target_linears(make("qwen2_moe"), pk.PruneConfig()))
    assert not any(n.endswith("shared_expert_gate") for n in names)
    assert "model.layers.0.mlp.shared_expert.down_proj" in names
    assert "model.layers.1.mlp.experts.3.down_proj" in names


def test_gpt2_conv1d_is_presented_transposed(ids):
    model = make("gpt2")
    t = pk.target_linears(model, pk.PruneConfig())
    c = t["transformer.h.0.attn.c_attn"]  # fused qkv, stored [in=64, out=192]
    assert c.weight.shape == (64, 192) and weight_of(c).shape == (192, 64)
    _prune(model, ids, "wanda", "2:4")
    _check_nm(c.weight.T, "c_attn")  # groups of 4 *inputs*: along dim 0 of the stored weight
    assert not ((c.weight.reshape(64, 48, 4) == 0).sum(-1) == 2).all()  # not along outputs


def test_discovery_prefers_the_text_stack_over_a_bigger_vision_tower(ids):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    torch.manual_seed(0)
    text = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                                image_size=28, patch_size=14)  # fmt: skip
    model = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
        image_token_index=VOCAB - 1, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2)).eval()  # fmt: skip
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_modules() if n.endswith(".layers")}
    assert params["model.vision_tower.encoder.layers"] > params["model.language_model.layers"]
    assert discover_blocks(model).blocks_path == "model.language_model.layers"
    report = _prune(model, ids % (VOCAB - 4), "wanda", "2:4")
    assert len(report.layers) == 14 and all(lr.sparsity == 0.5 for lr in report.layers)


class _NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(10, 4), nn.Linear(4, 10)


def test_model_without_blocks_is_a_one_line_error(ids):
    with pytest.raises(ConfigError, match="no decoder blocks found in _NoBlocks") as e:
        _prune(_NoBlocks(), ids)
    assert "\n" not in str(e.value)


class Linear8bitLt(nn.Linear):  # stands in for bitsandbytes' layer: int8 weight
    def __init__(self, i, o):
        super().__init__(i, o)
        self.weight = nn.Parameter(torch.zeros(o, i, dtype=torch.int8), requires_grad=False)


def test_quantized_layer_is_refused_naming_its_type(ids):
    model = make("llama")
    model.model.layers[1].mlp.down_proj = Linear8bitLt(128, 64)
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.mlp\.down_proj is a quantized layer .*Linear8bitLt.*load the model unquantized") as e:
        _prune(model, ids)
    assert "\n" not in str(e.value)


def test_fp8_experts_are_refused(ids):
    model = make("mixtral")
    exp = model.model.layers[0].mlp.experts
    exp.gate_up_proj = nn.Parameter(exp.gate_up_proj.data.to(torch.float8_e4m3fn), requires_grad=False)
    with pytest.raises(ConfigError, match=r"mlp\.experts is a quantized layer .*float8_e4m3fn.*load the model unquantized"):
        _prune(model, ids)


GEMMAS = ["gemma", "gemma2", "gemma3_text"]
STRUCTURED = [("wanda-sp", {}), ("magnitude-sp", {}), ("flap", {"compensate": False}), ("llm-pruner", {}),
              ("shortgpt", {"blocks": 1})]  # fmt: skip


def _block_params(model) -> int:
    return sum(p.numel() for p in engine_adapter(model).blocks(model).parameters())


@pytest.mark.parametrize("family", GEMMAS)
@pytest.mark.parametrize("method,args", STRUCTURED, ids=[m for m, _ in STRUCTURED])
def test_structured_on_gemma_reloads_stock_with_the_planned_size(family, method, args, ids, tmp_path):
    """Heads/channels (explicit head_dim, soft-capping, sliding/full layers) and block removal on
    Gemma 1/2/3: the block parameter count is the one reported, and plain ``from_pretrained``
    gives the in-memory logits."""
    from transformers import AutoModelForCausalLM

    model = make(family)
    before = _block_params(model)
    report = pk.prune_(model, pk.PruneConfig(method=method, sparsity=0.3, method_args=args), ids, progress=False)
    after = _block_params(model)
    assert after < before
    if "block_params_after" in report.settings:
        assert report.settings["block_params_after"] == after
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert _block_params(back) == after
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids[:2]).logits, model(input_ids=ids[:2]).logits, rtol=0, atol=0)


def test_flap_adaptive_refused_up_front_where_no_per_block_code_exists(ids):
    with pytest.raises(ConfigError, match="structure=adaptive .* not 'gemma2'"):
        pk.prune_(make("gemma2"), pk.PruneConfig(method="flap", method_args={"compensate": False, "structure": "adaptive"}), ids, progress=False)


def test_family_support_lists_every_tested_family():
    rows = {r["family"]: r for r in family_support()}
    assert set(rows) == set(ALL) | {"*"}
    width = {"flap", "wanda-sp", "magnitude-sp", "llm-pruner"}
    for fam in ("llama", "gemma3_text", "phi3", "gpt_neox", "opt"):
        assert width | {"shortgpt"} <= set(rows[fam]["structured"]), fam
    for fam in ("gpt2", "falcon", "deepseek_v3", "*"):  # no adapter: block removal only
        assert rows[fam]["structured"] == ["shortgpt"], fam
    for fam in ("mixtral", "qwen2_moe", "olmoe"):  # softmax-router MoE: block removal + expert pruning
        assert rows[fam]["structured"] == ["reap", "shortgpt", "stun"], fam
    for fam in ("llama", "opt"):  # per-block-only methods where the remote-code loader has a class
        assert {"tyr", "cfsp", "adapt-pruner"} <= set(rows[fam]["structured"]), fam
    for fam in ("gemma3_text", "phi3", "gpt_neox"):
        assert not {"tyr", "cfsp", "adapt-pruner", "stun", "reap"} & set(rows[fam]["structured"]), fam
    assert all(rows[f]["unstructured"] and rows[f]["nm"] for f in ALL)
    assert {f for f in ALL if rows[f]["moe"]} == set(MOE)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "qwen3", "gemma2"])
def test_flap_default_compensates_only_where_the_stock_config_can(family, ids, tmp_path):
    """FLAP (An et al., AAAI 2024) on configs without o_proj/down_proj bias flags: a default run
    skips the compensation those configs cannot carry, says so, and loads with plain
    transformers; asking for compensation explicitly is refused."""
    from transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError, match="compensate=true, but a stock"):
        pk.prune_(make(family), pk.PruneConfig(method="flap", sparsity=0.2, method_args={"compensate": True}), ids, progress=False)
    model = make(family)
    cfg = pk.PruneConfig(method="flap", sparsity=0.3, method_args={"heads": 2, "kv_heads": 1})
    report = pk.prune_(model, cfg, ids, progress=False)
    assert model.config.num_attention_heads == 2  # heads removed: attention compensation has work
    attn = family in ("qwen3", "gemma2")  # attention_bias exists, mlp_bias does not
    assert report.settings["compensated"] == {"attention": attn, "mlp": False}
    assert [n for n in report.notes if n.startswith("flap: no bias compensation in")]
    assert model.config.intermediate_size < 128
    assert any(m.bias is not None for n, m in model.named_modules() if n.endswith("o_proj")) == attn
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids[:2]).logits, model(input_ids=ids[:2]).logits, rtol=0, atol=0)


def _reload_equal(model, ids, path) -> nn.Module:
    """Save, reload with plain ``from_pretrained`` and check the logits are bit-identical."""
    from transformers import AutoModelForCausalLM

    model.save_pretrained(path)
    back = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids[:2]).logits, model(input_ids=ids[:2]).logits, rtol=0, atol=0)
    return back


@pytest.mark.parametrize("family", ALL)
def test_shortgpt_removes_blocks_on_every_family(family, ids, tmp_path):
    """ShortGPT (Men et al., 2024) on every family, dense and MoE: two of four blocks go, the
    lowest block influences are the ones removed, ``layer_idx`` and the config are renumbered,
    and plain ``from_pretrained`` rebuilds the same blocks (same size, identical logits)."""
    model = make(family, layers=4)
    loc = engine_adapter(model)
    report = pk.prune_(model, pk.PruneConfig(method="shortgpt", method_args={"blocks": 2}), ids, progress=False)
    bi, drop = report.settings["block_influence"], report.settings["removed"]
    assert len(drop) == 2 and max(bi[i] for i in drop) <= min(bi[i] for i in report.settings["kept"])
    blocks = loc.blocks(model)
    assert len(blocks) == 2 and model.config.get_text_config().num_hidden_layers == 2
    idx = [m.layer_idx for b in blocks for m in b.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(idx)) == [0, 1]
    assert report.settings["block_params_after"] == _block_params(model)
    back = _reload_equal(model, ids, tmp_path)
    assert _block_params(back) == _block_params(model)


# per-layer config patterns that block removal must rewrite: (family, overrides, blocks to drop)
PATTERNS = [
    ("gemma3_text", {}, [0, 3]),  # layer_types sliding/full
    ("gpt_oss", {}, [1, 2]),
    ("gemma2", {}, [0]),
    ("deepseek_v3", {"first_k_dense_replace": 2}, [1, 3]),  # dense blocks 0, 1 then MoE
    ("qwen2_moe", {"decoder_sparse_step": 2}, [1]),  # blocks 1 and 3 sparse
    ("qwen3_moe", {"mlp_only_layers": [0, 2]}, [0, 1]),
]  # fmt: skip


@pytest.mark.parametrize("family,over,drop", PATTERNS, ids=[p[0] for p in PATTERNS])
def test_block_removal_rewrites_per_layer_patterns(family, over, drop, ids, tmp_path):
    """Removing chosen blocks keeps each kept block's kind (sliding/full attention, dense/MoE
    MLP): the reloaded model has the same block structure and identical logits, and a cached
    generation matches an uncached one."""
    model = make(family, layers=4, **over)
    loc = engine_adapter(model)
    before = [loc.blocks(model)[i] for i in range(4) if i not in drop]
    kept = surgery.remove_blocks(model, loc, drop)
    assert kept == [i for i in range(4) if i not in drop]
    shapes = lambda m: [sorted((n, tuple(p.shape)) for n, p in b.named_parameters()) for b in loc.blocks(m)]  # noqa: E731
    assert shapes(model) == [sorted((n, tuple(p.shape)) for n, p in b.named_parameters()) for b in before]
    back = _reload_equal(model, ids, tmp_path)
    assert shapes(back) == shapes(model)
    kinds = lambda bs: [[(getattr(m, "layer_type", None), getattr(m, "sliding_window", None)) for m in b.modules()]  # noqa: E731
                        for b in bs]  # fmt: skip
    assert kinds(loc.blocks(back)) == kinds(before)
    if family in ("gemma3_text", "gpt_oss", "gemma2"):
        assert any(s for b in kinds(before) for _, s in b) and model.config.layer_types == [
            FAMILIES[family][2].get("layer_types", ["sliding_attention", "full_attention"])[i % 2] for i in kept]
    prompt = ids[:1, :20]  # longer than the sliding window
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=True)
        plain = model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_block_removal_refused_where_the_config_fixes_scales_by_index(ids):
    model = make("gpt2", layers=3, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        surgery.remove_blocks(model, engine_adapter(model), [0])
    assert surgery.remove_blocks(model, engine_adapter(model), [2]) == [0, 1]  # trailing: fine


# --- structured widths on fused projections (Phi-3 [q|k|v], [gate|up]; GPT-NeoX per-head q,k,v)
FUSED = ["phi3", "gpt_neox"]


@pytest.mark.parametrize("family,keep_q,keep_kv", [("phi3", [0, 3], [0, 1]), ("phi3", [3, 2], [1]),
                                                   ("gpt_neox", [3, 1], [3, 1])])  # fmt: skip
def test_fused_shrink_equals_the_masked_block(family, keep_q, keep_kv, ids):
    """Splitting a fused projection, keeping some heads / MLP channels and re-fusing gives the
    block whose removed heads and channels are masked (zero output-projection columns)."""
    import copy

    model = make(family, layers=1)
    adapter = pk.models.get_adapter(model)
    block = adapter.blocks(model)[0]
    ref = copy.deepcopy(block)
    (inp,) = capture_block_inputs(model, adapter, ids[:4], batch_size=4)
    hd, inter = 16, 128
    keep_ch = torch.arange(1, inter, 3)
    surgery.shrink_attention(block, adapter, hd, keep_q, keep_kv)
    surgery.shrink_mlp(block, adapter, keep_ch)
    with torch.no_grad():
        o_ref = adapter.attention(ref).get_submodule(adapter.o)
        d_ref = adapter.mlp_module(ref).get_submodule(adapter.mlp_out)
        for lin, keep in ((o_ref, surgery.head_channels(torch.tensor(keep_q), hd)), (d_ref, keep_ch)):
            gone = torch.ones(lin.in_features, dtype=torch.bool)
            gone[keep] = False
            lin.weight[:, gone] = 0
        out = block(inp.hidden, **inp.kwargs_for(0))
        want = ref(inp.hidden, **inp.kwargs_for(0))
    out, want = (o[0] if isinstance(o, tuple) else o for o in (out, want))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert surgery.attention_widths(block, adapter, hd) == (len(keep_q), len(keep_kv))
    assert surgery.mlp_width(block, adapter) == len(keep_ch)
    fused_in = adapter.mlp_module(block).get_submodule(adapter.mlp_in[0])
    assert fused_in.out_features == len(keep_ch) * (2 if adapter.mlp_in_fused else 1)


FUSED_RUNS = [("flap", {}), ("flap", {"heads": 2, "kv_heads": 1}), ("wanda-sp", {}), ("magnitude-sp", {}),
              ("llm-pruner", {}), ("llm-pruner", {"heads": 2})]  # fmt: skip


@pytest.mark.parametrize("family", FUSED)
@pytest.mark.parametrize("method,args", FUSED_RUNS, ids=[f"{m}-{len(a)}" for m, a in FUSED_RUNS])
def test_width_methods_on_fused_families_reload_stock_with_the_planned_size(family, method, args, ids, tmp_path):
    """Every width method on Phi-3 and GPT-NeoX: the config states the kept widths, the block
    parameter count is the plan's (removed heads and channels priced by ``common.costs``), and
    plain ``from_pretrained`` gives the in-memory logits. GPT-NeoX's stock attention derives
    head_size from hidden/heads, so only MLP channels go there (asking for heads is refused)."""
    from prunekit.structured import common as C

    model = make(family)
    adapter = pk.models.get_adapter(model)
    geo = C.geometry(model, adapter)
    costs = C.costs(model, adapter, geo)
    cfg = pk.PruneConfig(method=method, sparsity=0.3, method_args=args)
    if family == "gpt_neox" and "heads" in args:
        with pytest.raises(ConfigError, match="cannot express fewer attention heads"):
            pk.prune_(model, cfg, ids, progress=False)
        return
    report = pk.prune_(model, cfg, ids, progress=False)
    plan = report.settings["plan"]
    if "heads" in args:
        assert plan["heads"] == args["heads"] and plan["heads"] < geo.heads
    removed = C.attn_removed(geo, costs, plan["kv_heads"], plan["heads"] // plan["kv_heads"])
    removed += (geo.intermediate - plan["intermediate"]) * costs.channel
    assert _block_params(model) == 2 * (costs.block - removed) == report.settings["block_params_after"]
    mc = model.config
    heads = plan["heads"] if family == "phi3" else geo.heads
    assert (mc.num_attention_heads, mc.intermediate_size) == (heads, plan["intermediate"])
    if family == "phi3":
        assert mc.num_key_value_heads == plan["kv_heads"] and mc.head_dim == 16
        assert all(b.self_attn.config is mc for b in model.model.layers)  # private copies dropped
    back = _reload_equal(model, ids, tmp_path)
    assert _block_params(back) == _block_params(model)


def test_flap_on_gpt_neox_folds_the_compensation_into_the_existing_mlp_bias(ids):
    """FLAP's bias compensation (An et al., AAAI 2024) is exact on GPT-NeoX: dense_4h_to_h always
    has a bias, so a default run compensates, adds no parameters, and lands closer to the dense
    logits than the same run without compensation."""
    dense = make("gpt_neox")
    with torch.no_grad():
        ref = dense(input_ids=ids).logits
    errs, sizes = {}, {}
    for comp in (True, False):
        model = make("gpt_neox")
        rep = pk.prune_(model, pk.PruneConfig(method="flap", sparsity=0.3, method_args={} if comp else {"compensate": False}),
                        ids, progress=False)  # fmt: skip
        assert rep.settings["compensated"]["mlp"] is comp
        assert not [n for n in rep.notes if "no bias compensation" in n]
        sizes[comp] = _block_params(model)
        with torch.no_grad():
            errs[comp] = (model(input_ids=ids).logits - ref).pow(2).mean().item()
    assert sizes[True] == sizes[False] and errs[True] < errs[False]


def test_phi3_longrope_keeps_heads_and_prunes_mlp_channels(ids, tmp_path):
    """Phi-3's LongRoPE factors must have (hidden_size / heads) / 2 entries, so fewer heads would
    not save: width methods keep the heads there (and say so), asking for fewer is refused."""
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 256, "partial_rotary_factor": 1.0}  # fmt: skip
    with pytest.raises(ConfigError, match="cannot express fewer attention heads"):
        pk.prune_(make("phi3", rope_parameters=rope), pk.PruneConfig(method="flap", method_args={"heads": 2}), ids, progress=False)
    model = make("phi3", rope_parameters=rope)
    report = pk.prune_(model, pk.PruneConfig(method="flap", sparsity=0.3), ids, progress=False)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert model.config.intermediate_size == report.settings["plan"]["intermediate"] < 128
    assert any("attention heads kept (its LongRoPE factors" in n for n in report.notes)
    _reload_equal(model, ids, tmp_path)


@pytest.mark.parametrize("family,method", [("phi3", "wanda-sp"), ("gpt_neox", "flap"), ("gpt2", "shortgpt"),
                                           ("qwen3_moe", "shortgpt")])  # fmt: skip
def test_cli_structured_on_new_families_writes_a_stock_folder(family, method, tmp_path, capsys, tokenizer, calib_txt):
    """``prunekit prune -m <structured>`` on a saved checkpoint of each newly covered family: the
    output folder loads with plain ``from_pretrained`` and ``info`` reports the kept widths."""
    import json

    from transformers import AutoModelForCausalLM

    from prunekit.cli.main import main

    src, out = tmp_path / "src", tmp_path / "out"
    make(family, layers=3).save_pretrained(src)
    tokenizer.save_pretrained(src)
    rc = main(["prune", str(src), "-m", method, "--sparsity", "0.3", "--calib", str(calib_txt), "--nsamples", "2",
               "--seqlen", "16", "-q", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    back = AutoModelForCausalLM.from_pretrained(out)
    assert _block_params(back) < _block_params(make(family, layers=3))
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    if family in ("phi3", "gpt_neox"):
        assert [b["intermediate"] for b in info["blocks"]] == [back.config.intermediate_size] * 3 != [128] * 3
    else:
        assert back.config.get_text_config().num_hidden_layers == 2  # round(0.3 x 3) blocks removed
