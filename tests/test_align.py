"""Hardware-aligned widths (--set align=N) for every structured method."""

from __future__ import annotations

import pytest
import torch

from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.models.adapters import get_adapter
from prunekit.structured import STRUCTURED_METHODS
from prunekit.structured import common as C

VOCAB = 300


def _llama(layers: int = 3, inter: int = 128, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _ids(n: int = 4, seq: int = 32) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(0))


def _prune(model, method, sparsity=0.3, **args):
    return STRUCTURED_METHODS.get(method)(model, PruneConfig(method=method, sparsity=sparsity, method_args=args),
                                          _ids(), None, False)  # fmt: skip


# --- the helpers ------------------------------------------------------------------------------------
def test_align_width_rounds_to_nearest_multiple_within_bounds():
    assert C.align_width(1229, 64, 1536) == 1216
    assert C.align_width(1250, 64, 1536) == 1280
    assert C.align_width(1536, 64, 1536) == 1536  # nothing pruned stays whole
    assert C.align_width(5, 64, 1536) == 64  # never below one unit
    assert C.align_width(1530, 64, 1000 + 536) == 1536
    assert C.align_width(1229.4, 1, 1536) == 1229
    assert C.align_width(90, 64, 100) == 64  # a width that is not a multiple keeps below it
    with pytest.raises(ConfigError, match="exceeds"):
        C.align_width(10, 128, 100)


def test_align_widths_multiples_with_total_within_half_a_unit():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        targets = (torch.rand(7, generator=g) * 1400 + 100).tolist()
        w = C.align_widths(targets, 64, [1536] * 7, sum(targets))
        assert all(x % 64 == 0 and 64 <= x <= 1536 for x in w)
        assert abs(sum(w) - sum(targets)) <= 32
    assert C.align_widths([1536, 700], 64, [1536, 1536], 2236) == [1536, 704]  # a full block stays full
    assert C.align_widths([100.4, 200.6], 1, [300, 300], 301) == [100, 201]


def test_default_align_depends_on_mlp_width():
    assert C.resolve_align({}, 1536) == C.DEFAULT_ALIGN == 64
    assert C.resolve_align({}, 128) == 1
    assert C.resolve_align({"align": 8}, 128) == 8
    with pytest.raises(ConfigError, match="exceeds the MLP width"):
        C.resolve_align({"align": 256}, 128, "flap")


# --- every structured method ----------------------------------------------------------------------
CASES = [
    ("flap", {}), ("flap", {"structure": "ratio"}), ("flap", {"structure": "adaptive"}),
    ("wanda-sp", {}), ("magnitude-sp", {}), ("llm-pruner", {"windows": 2, "seqlen": 16}),
    ("cfsp", {}), ("adapt-pruner", {"windows": 2, "seqlen": 16, "recover_tokens": 0}),
]  # fmt: skip


@pytest.mark.parametrize("method,args", CASES, ids=[f"{m}-{'-'.join(map(str, a.values())) or 'default'}" for m, a in CASES])
def test_every_width_method_keeps_multiples_of_align(method, args):
    model = _llama()
    rep = _prune(model, method, 0.3, align=32, **args)
    assert rep.settings["align"] == 32
    for b in rep.settings["blocks"]:
        assert b["intermediate"] % 32 == 0, (method, b)
        assert b["heads"] % b["kv_heads"] == 0  # heads stay GQA-valid
    assert rep.settings["block_sparsity"] == pytest.approx(0.3, abs=0.06)
    assert torch.isfinite(model(_ids()).logits).all()


def test_align_changes_flap_width_versus_off():
    off, on = _llama(inter=200), _llama(inter=200)
    r_off = _prune(off, "flap", 0.25, align=1)
    r_on = _prune(on, "flap", 0.25, align=64)
    assert r_off.settings["widths"]["intermediate"] % 64 != 0
    assert r_on.settings["widths"]["intermediate"] % 64 == 0


def test_default_align_on_a_wide_mlp_is_64():
    model = _llama(layers=1, inter=1024)
    rep = _prune(model, "magnitude-sp", 0.3)
    assert rep.settings["align"] == 64 and model.config.intermediate_size % 64 == 0


def test_shortgpt_accepts_align_and_says_it_does_not_apply():
    rep = _prune(_llama(), "shortgpt", 0.34, align=64)
    assert any("align does not apply" in n for n in rep.notes)


@pytest.mark.parametrize("method", ["flap", "wanda-sp", "magnitude-sp", "llm-pruner", "cfsp", "adapt-pruner"])
def test_align_larger_than_the_mlp_is_one_line(method):
    with pytest.raises(ConfigError, match="exceeds the MLP width") as e:
        _prune(_llama(layers=1), method, 0.2, align=4096)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="align"):
        _prune(_llama(layers=1), method, 0.2, align=0)


def test_aligned_uniform_output_reloads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _llama()
    _prune(model, "wanda-sp", 0.3, align=32)
    assert model.config.intermediate_size % 32 == 0 and get_adapter(model) is not None
    with torch.no_grad():
        ref = model(_ids()).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(_ids()).logits, ref, rtol=0, atol=0)
