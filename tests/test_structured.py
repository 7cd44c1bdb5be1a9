"""Structured pruning: surgery equivalence, GQA mapping, stock-config round trip, methods, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.models.adapters import get_adapter
from prunekit.structured import STRUCTURED_METHODS, surgery
from prunekit.structured import common as C

VOCAB = 300


def _llama(layers: int = 2, seed: int = 0, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=False,
    )  # fmt: skip
    kw.update(over)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def _ids(n: int = 4, seq: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def _block_io(model, ids):
    """Inputs (hidden, kwargs) of block 0 for ``ids``."""
    from prunekit.engine import capture_block_inputs

    return capture_block_inputs(model, get_adapter(model), ids, batch_size=len(ids))[0]


def _out(block, inp):
    o = block(inp.hidden, **inp.kwargs)
    return o[0] if isinstance(o, tuple) else o


def _prune(model, method, ids=None, sparsity=None, **args):
    return STRUCTURED_METHODS.get(method)(
        model, PruneConfig(method=method, sparsity=sparsity, method_args=args), ids, None, False
    )


# --- surgery ---------------------------------------------------------------------------------
def test_linear_in_out_and_compensation():
    torch.manual_seed(0)
    lin = nn.Linear(8, 5)
    ref = copy.deepcopy(lin)
    x = torch.randn(20, 8) + 3.0
    mean = x.mean(0)
    keep = torch.tensor([0, 2, 3, 7])
    surgery.prune_linear_in(lin, keep, input_mean=mean)
    assert lin.weight.shape == (5, 4) and lin.in_features == 4
    # masked reference: removed inputs replaced by their mean
    xm = mean.expand_as(x).clone()
    xm[:, keep] = x[:, keep]
    torch.testing.assert_close(lin(x[:, keep]), ref(xm), rtol=1e-5, atol=1e-5)
    surgery.prune_linear_out(lin, torch.tensor([True, False, True, True, False]))
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (3,) and lin.out_features == 3
    nb = nn.Linear(4, 2, bias=False)
    surgery.prune_linear_in(nb, [1, 2], input_mean=torch.ones(4))
    assert nb.bias is not None and nb.bias.shape == (2,)


@pytest.mark.parametrize("keep_q,keep_kv", [([0, 2], [0, 1]), ([2, 3], [1]), ([1], [0])])
def test_shrunk_block_equals_masked_block(keep_q, keep_kv):
    model = _llama(layers=1)
    adapter = get_adapter(model)
    ids = _ids()
    inp = _block_io(model, ids)
    block = adapter.blocks(model)[0]
    ref = copy.deepcopy(block)
    hd, heads = 16, 4
    attn_mean = torch.randn(heads * hd)
    mlp_mean = torch.randn(128)
    keep_ch = torch.arange(0, 128, 3)
    surgery.shrink_attention(block, adapter, hd, keep_q, keep_kv, input_mean=attn_mean)
    surgery.shrink_mlp(block, adapter, keep_ch, input_mean=mlp_mean)
    # reference: same block with removed heads / channels masked (zero o_proj / down_proj
    # columns) plus the compensation bias W[:, removed] @ mean[removed]
    with torch.no_grad():
        q_keep = surgery.head_channels(torch.tensor(keep_q), hd)
        for lin, keep, mean in ((ref.self_attn.o_proj, q_keep, attn_mean), (ref.mlp.down_proj, keep_ch, mlp_mean)):
            gone = torch.ones(lin.in_features, dtype=torch.bool)
            gone[keep] = False
            lin.bias = nn.Parameter(lin.weight[:, gone] @ mean[gone])
            lin.weight[:, gone] = 0
    with torch.no_grad():
        torch.testing.assert_close(_out(block, inp), _out(ref, inp), rtol=1e-4, atol=1e-5)
    attn = block.self_attn
    assert attn.q_proj.out_features == len(keep_q) * hd
    assert attn.k_proj.out_features == attn.v_proj.out_features == len(keep_kv) * hd
    assert attn.num_key_value_groups == len(keep_q) // len(keep_kv)
    assert block.mlp.up_proj.out_features == block.mlp.gate_proj.out_features == len(keep_ch)


def test_gqa_mapping_is_enforced():
    # 4 query heads, 2 KV heads: heads 0,1 -> KV 0; heads 2,3 -> KV 1
    assert surgery.check_gqa_keep(torch.tensor([1, 3]), torch.tensor([0, 1]), 4, 2) == 1
    with pytest.raises(ValueError, match="GQA"):
        surgery.check_gqa_keep(torch.tensor([0, 1]), torch.tensor([0, 1]), 4, 2)  # head 1 is KV 0's
    with pytest.raises(ValueError):
        surgery.check_gqa_keep(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), 4, 2)  # uneven
    with pytest.raises(ConfigError):
        surgery.check_gqa_keep(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 4, 2)
    geo = C.Geometry(heads=6, kv_heads=2, head_dim=8, hidden=32, intermediate=64, attn_prunable=True)
    scores = torch.tensor([0.0, 5.0, 1.0, 9.0, 8.0, 7.0])
    q, kv = C.select_heads(scores, geo, kk=2, qq=2)
    assert kv.tolist() == [0, 1] and q.tolist() == [1, 2, 3, 4]
    q, kv = C.select_heads(scores, geo, kk=1, qq=2)
    assert kv.tolist() == [1] and q.tolist() == [3, 4]
    # every option the planner may pick is GQA-valid
    for kk, qq in C.attention_options(geo):
        q, kv = C.select_heads(scores, geo, kk, qq)
        surgery.check_gqa_keep(q, kv, 6, 2)


# --- methods end to end ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["flap", "wanda-sp", "magnitude-sp"])
def test_width_methods_hit_budget_and_run(method):
    model = _llama()
    ids = _ids()
    rep = _prune(model, method, ids, sparsity=0.3)
    assert abs(rep.settings["block_sparsity"] - 0.3) < 0.03
    cfg = model.config
    w = rep.settings["widths"]
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (
        w["heads"], w["kv_heads"], w["intermediate"])  # fmt: skip
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    assert rep.timings["total"] > 0 and len(rep.settings["blocks"]) == 2
    assert torch.isfinite(model(ids).logits).all()


def test_flap_save_and_plain_reload_identical(tmp_path):
    from transformers import AutoModelForCausalLM

    from prunekit.structured.describe import block_widths

    model = _llama()
    ids = _ids()
    rep = _prune(model, "flap", ids, sparsity=0.25, heads=2, kv_heads=1)
    assert rep.settings["plan"]["heads"] == 2
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)
    assert cfg.attention_bias and cfg.mlp_bias  # compensation biases; q/k/v filled with zeros
    blk = get_adapter(model).blocks(model)[0]
    assert torch.count_nonzero(blk.self_attn.q_proj.bias) == 0
    assert torch.count_nonzero(blk.self_attn.o_proj.bias) > 0
    assert block_widths(model)[0] == {"index": 0, "heads": 2, "kv_heads": 1, "intermediate": cfg.intermediate_size}
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)


def test_flap_compensation_beats_plain_removal():
    """FLAP's bias compensation should reduce the output error on calibration data."""
    ids = _ids(8, 32)
    dense = _llama()
    with torch.no_grad():
        ref = dense(ids).logits
    errs = {}
    for comp in (True, False):
        m = _llama()
        _prune(m, "flap", ids, sparsity=0.3, compensate=comp)
        with torch.no_grad():
            errs[comp] = (m(ids).logits - ref).pow(2).mean().item()
    assert errs[True] < errs[False]


def test_opt_flap_prunes_mlp_only():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                     num_attention_heads=4, word_embed_proj_dim=64)).eval()  # fmt: skip
    ids = _ids()
    rep = _prune(model, "flap", ids, sparsity=0.2)
    assert model.config.num_attention_heads == 4 and model.config.ffn_dim < 128
    assert any("attention heads kept" in n for n in rep.notes)
    assert torch.isfinite(model(ids).logits).all()


def test_shortgpt_removes_blocks_and_cache_works(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _llama(layers=4)
    ids = _ids()
    rep = _prune(model, "shortgpt", ids, blocks=2)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    assert len(rep.settings["removed"]) == 2 and rep.settings["block_sparsity"] == pytest.approx(0.5)
    prompt = ids[:1, :6]
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True)
        plain = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain) and cached.shape[1] == 11
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    # by sparsity: 4 blocks x 0.25 -> 1 block
    m2 = _llama(layers=4)
    _prune(m2, "shortgpt", ids, sparsity=0.25)
    assert m2.config.num_hidden_layers == 3


def test_api_dispatch():
    import prunekit as pk

    model = _llama()
    rep = pk.prune_(model, PruneConfig(method="magnitude-sp"), _ids(), progress=False)
    assert rep.method == "magnitude-sp" and rep.target_sparsity == pytest.approx(0.2)
    assert 0.17 < rep.settings["block_sparsity"] < 0.23


# --- refusals --------------------------------------------------------------------------------
def test_sparsity_removing_every_head_refused():
    model = _llama()
    with pytest.raises(ConfigError, match="every attention head"):
        _prune(model, "flap", _ids(), sparsity=0.99)
    with pytest.raises(ConfigError, match="every attention head"):
        _prune(_llama(), "magnitude-sp", sparsity=0.97)


@pytest.mark.parametrize("args,msg", [
    ({"heads": 3}, "GQA-valid"), ({"kv_heads": 5}, "kv_heads"), ({"structure": "weird"}, "structure"),
    ({"compensate": "maybe"}, "true or false"), ({"nonsense": 1}, "no setting"),
])  # fmt: skip
def test_bad_settings_refused(args, msg):
    with pytest.raises(ConfigError, match=msg):
        _prune(_llama(), "flap", _ids(), sparsity=0.2, **args)


def test_family_without_adapter_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    for method in ("flap", "magnitude-sp", "wanda-sp", "llm-pruner"):
        with pytest.raises(ConfigError, match="adapter"):
            _prune(model, method, _ids())
    _prune(model, "shortgpt", _ids(), blocks=1)  # block removal needs only the discovered blocks
    assert model.config.n_layer == 1 and len(model.transformer.h) == 1


def test_shortgpt_bad_counts_refused():
    with pytest.raises(ConfigError, match="between 1 and"):
        _prune(_llama(layers=2), "shortgpt", _ids(), blocks=2)
    with pytest.raises(ConfigError, match="between 1 and"):
        _prune(_llama(layers=2), "shortgpt", _ids(), sparsity=0.1)  # rounds to 0 blocks


def test_compensation_refused_where_stock_config_has_no_bias():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2)).eval()  # fmt: skip
    with pytest.raises(ConfigError, match="compensate=false"):
        _prune(model, "flap", _ids(), sparsity=0.2, compensate=True)  # explicit: refused
    _prune(model, "flap", _ids(), sparsity=0.2, compensate=False)
    assert model.config.intermediate_size < 128


def test_llm_pruner_runs_and_restores_grad_flags():
    model = _llama()
    ids = _ids(4, 32)
    rep = _prune(model, "llm-pruner", ids, sparsity=0.3, windows=2, seqlen=16)
    assert abs(rep.settings["block_sparsity"] - 0.3) < 0.03
    assert rep.calib["nsamples"] == 2 and rep.calib["seqlen"] == 16
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.isfinite(model(ids).logits).all()


def test_llm_pruner_cost_plan_follows_importance():
    """Taylor importances are loss estimates, comparable across heads and channels: when the
    attention output barely matters, the cost plan removes more heads than the ratio plan."""
    ids = _ids(4, 32)
    heads = {}
    for structure in ("ratio", "cost"):
        model = _llama()
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.mul_(1e-3)
        _prune(model, "llm-pruner", ids, sparsity=0.3, windows=2, seqlen=16, structure=structure)
        heads[structure] = model.config.num_attention_heads
    assert heads["cost"] < heads["ratio"]


def test_flap_adaptive_per_block_widths_roundtrip(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from prunekit.structured.per_block import load_pretrained

    model = _llama(layers=3)
    ids = _ids()
    # make block 1 much less important so the global threshold treats blocks differently
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(0.01)
    rep = _prune(model, "flap", ids, sparsity=0.3, structure="adaptive")
    assert abs(rep.settings["block_sparsity"] - 0.3) < 0.03
    widths = model.config.prunekit_block_widths
    assert len({w["intermediate"] for w in widths}) > 1
    for w in widths:
        assert w["heads"] % w["kv_heads"] == 0
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)
    with pytest.raises(Exception):  # plain transformers refuses rather than loading garbage
        AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    import prunekit as pk

    m3, _ = pk.load(tmp_path)  # the generic loader (and so `prunekit eval/info`) detects the format
    with torch.no_grad():
        torch.testing.assert_close(m3(ids).logits, ref, rtol=0, atol=0)
