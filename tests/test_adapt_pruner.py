"""Adapt-Pruner: the adaptive schedule, incremental ~5% steps, recovery on calibration data only."""

from __future__ import annotations

import pytest
import torch

from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.structured import STRUCTURED_METHODS
from prunekit.structured import adapt_pruner as A

VOCAB = 300
FAST = {"windows": 2, "seqlen": 32, "recover_tokens": 128, "recover_seqlen": 32}


def _llama(layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _ids(n: int = 4, seq: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def _prune(model, ids, sparsity=0.2, **args):
    cfg = PruneConfig(method="adapt-pruner", sparsity=sparsity, method_args={**FAST, **args})
    return STRUCTURED_METHODS.get("adapt-pruner")(model, cfg, ids, None, False)


# --- the schedule -------------------------------------------------------------------------------
def test_step_targets_are_even_steps_of_about_five_percent():
    assert A.step_targets(0.2, 0.05) == pytest.approx([0.05, 0.10, 0.15, 0.20])
    assert A.step_targets(0.12, 0.05) == pytest.approx([0.04, 0.08, 0.12])
    assert A.step_targets(0.03, 0.05) == pytest.approx([0.03])


def test_normalised_importance_in_unit_range_with_zero_mean():
    n = A.normalised_importance([0.1, 0.4, 0.2, 0.3])
    assert max(abs(x) for x in n) == pytest.approx(1.0) and sum(n) == pytest.approx(0.0, abs=1e-12)
    assert A.normalised_importance([0.2, 0.2]) == [0.0, 0.0]


def test_most_similar_blocks_lose_most_mean_kept_and_never_decreasing():
    bi = [0.30, 0.05, 0.15, 0.50]  # block influence 1 - cos: block 1 most similar in -> out
    s = A.next_sparsities([0.0] * 4, bi, 0.05, 0.03, 0.05)
    assert sum(s) / 4 == pytest.approx(0.05, abs=1e-9)
    order = sorted(range(4), key=lambda i: bi[i])  # least influential first
    assert [s[i] for i in order] == sorted(s, reverse=True)
    # a later step whose importance would lower a block's sparsity never restores units
    prev = [0.10, 0.00, 0.10, 0.10]
    s2 = A.next_sparsities(prev, [0.0, 1.0, 0.0, 0.0], 0.0, 0.05, 0.075)
    assert all(b >= a - 1e-12 for a, b in zip(prev, s2)) and sum(s2) / 4 == pytest.approx(0.075, abs=1e-9)


# --- end to end -----------------------------------------------------------------------------------
def test_incremental_steps_follow_similarity_and_hit_budget(tmp_path):
    from prunekit.structured.per_block import load_pretrained

    model = _llama()
    with torch.no_grad():  # block 1 barely changes its input: the most similar, should lose most
        model.model.layers[1].mlp.down_proj.weight.mul_(0.01)
        model.model.layers[1].self_attn.o_proj.weight.mul_(0.01)
    ids = _ids()
    rep = _prune(model, ids, 0.2)
    steps = rep.settings["steps"]
    assert len(steps) == 4
    prev = 0.0
    for st in steps:  # each step removes ~5% of the block parameters
        assert st["block_sparsity"] - prev == pytest.approx(0.05, abs=0.012)
        prev = st["block_sparsity"]
        bi, tg = st["block_influence"], st["block_targets"]
        assert max(range(4), key=lambda i: tg[i]) == min(range(4), key=lambda i: bi[i]) == 1
        assert "recovery_loss" in st
    assert rep.settings["block_sparsity"] == pytest.approx(0.2, abs=0.01)
    widths = rep.settings["blocks"]
    params = [b["intermediate"] + 100 * b["heads"] for b in widths]
    assert params.index(min(params)) == 1  # block 1 is the smallest
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        ref = model(ids).logits
    assert torch.isfinite(ref).all()
    model.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)


def test_recovery_trains_on_calibration_ids_only(monkeypatch):
    import prunekit.recovery.lora as lora

    seen = []
    real = lora.recover_

    def spy(model, tokenizer, data, config=None, **kw):
        seen.append((data, config))
        return real(model, tokenizer, data, config, **kw)

    monkeypatch.setattr(lora, "recover_", spy)
    ids = _ids()
    rep = _prune(_llama(layers=2), ids, 0.1)
    assert len(seen) == len(rep.settings["steps"]) == 2
    for data, cfg in seen:
        assert data is ids and cfg.tokens == FAST["recover_tokens"]
    seen.clear()
    _prune(_llama(layers=2), ids, 0.1, recover_tokens=0)
    assert seen == []


def test_recovery_changes_the_model():
    ids = _ids()
    a, b = _llama(layers=2), _llama(layers=2)
    _prune(a, ids, 0.1, recover_tokens=0)
    _prune(b, ids, 0.1, recover_tokens=256, recover_lr=1e-2)
    assert a.model.layers[0].mlp.down_proj.weight.shape == b.model.layers[0].mlp.down_proj.weight.shape
    assert not torch.equal(a.model.layers[0].mlp.down_proj.weight, b.model.layers[0].mlp.down_proj.weight)


@pytest.mark.parametrize("args,msg", [({"step": 0}, "setting step"), ({"structure": "x"}, "structure"),
                                      ({"align": 1000}, "exceeds the MLP width")])  # fmt: skip
def test_bad_input_is_one_line(args, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        _prune(_llama(layers=2), _ids(), 0.2, **args)
    assert "\n" not in str(e.value)
