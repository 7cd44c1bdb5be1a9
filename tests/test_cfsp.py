"""CFSP: golden scores against direct loops, allocation order, exact budget, alignment, reload."""

from __future__ import annotations

import math

import pytest
import torch

from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.models.adapters import get_adapter
from prunekit.structured import STRUCTURED_METHODS
from prunekit.structured import cfsp as F
from prunekit.structured import common as C

VOCAB = 300


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
    return STRUCTURED_METHODS.get("cfsp")(model, PruneConfig(method="cfsp", sparsity=sparsity, method_args=args),
                                          ids, None, False)  # fmt: skip


# --- golden: the scores against direct loop computations ----------------------------------------
def test_angular_distance_matches_direct_formula():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    got = F.angular_distance(x, y)
    for b in range(3):
        for t in range(5):
            u, v = x[b, t].tolist(), y[b, t].tolist()
            dot = sum(p * q for p, q in zip(u, v))
            cos = dot / math.sqrt(sum(p * p for p in u)) / math.sqrt(sum(q * q for q in v))
            assert got[b, t].item() == pytest.approx(math.acos(max(-1, min(1, cos))) / math.pi, abs=1e-6)
    assert F.angular_distance(x, 2 * x).abs().max() < 1e-3  # same direction: no turn


def _naive_fine(Wd, Wins, a, b, c):
    d, m = Wd.shape
    out = []
    for j in range(m):
        r = 0.0
        for i in range(d):  # down_proj: channel j's share of output i
            num = abs(Wd[i, j].item()) * a[j].item() ** b
            den = sum(abs(Wd[i, k].item()) * a[k].item() ** b for k in range(m))
            r += num / den
            for W in Wins:  # gate/up: channel j's share of input i
                r += abs(W[j, i].item()) / sum(abs(W[k, i].item()) for k in range(m))
        out.append(a[j].item() ** c * r / d)
    return torch.tensor(out)


@pytest.mark.parametrize("b,c", [(1.0, 1.0), (0.5, 2.0), (0.0, 0.0)])
def test_fine_score_matches_direct_loops(b, c):
    g = torch.Generator().manual_seed(2)
    d, m = 6, 10
    Wd, Wg, Wu = torch.randn(d, m, generator=g), torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
    a = torch.rand(m, generator=g) + 0.1
    got = F.fine_scores(Wd, [Wg, Wu], a, b, c)
    torch.testing.assert_close(got, _naive_fine(Wd, [Wg, Wu], a, b, c), rtol=1e-5, atol=1e-7)


def test_fine_score_weights_matter_unlike_the_released_normalisation():
    """Equal activations: the paper's score ranks by weights; the released code's own-column
    normalisation (score=activation) cannot tell the channels apart."""
    d, m = 4, 3
    Wd = torch.ones(d, m)
    Wd[:, 1] = 0.01  # channel 1 barely reaches the output
    Wg = torch.ones(m, d)
    Wu = torch.ones(m, d)
    a = torch.ones(m)
    paper = F.fine_scores(Wd, [Wg, Wu], a)
    assert paper.argmin().item() == 1 and paper[1] < paper[0] - 0.1
    released = F.fine_scores(Wd, [Wg, Wu], a, kind="activation")
    assert torch.equal(released, torch.ones(m))
    own_column = (Wd.abs() / Wd.abs().sum(0, keepdim=True)).mean(0)  # what the released code computes
    torch.testing.assert_close(own_column, torch.full((m,), 1 / d))


def test_block_statistics_match_hidden_states_and_hooked_norms():
    model = _llama()
    ids = _ids()
    adapter = get_adapter(model)
    sq = {}

    def hook(i):
        def f(_m, inp, _out):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            sq[i] = sq.get(i, 0) + x.pow(2).sum(0)
        return f

    hs = [b.mlp.down_proj.register_forward_hook(hook(i)) for i, b in enumerate(model.model.layers)]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for h in hs:
        h.remove()
    imp, norms = F.block_statistics(model, adapter, ids, batch_size=2)
    for i in range(len(imp) - 1):  # the last hidden state is after the final norm
        ref = F.angular_distance(out.hidden_states[i], out.hidden_states[i + 1]).mean().item()
        assert imp[i] == pytest.approx(ref, rel=1e-4)
    for i, n in enumerate(norms):
        torch.testing.assert_close(n, sq[i].sqrt(), rtol=1e-4, atol=1e-5)


# --- allocation -------------------------------------------------------------------------------------
def test_keep_fractions_follow_importance_and_keep_the_mean():
    imp = [0.3, 0.1, 0.5, 0.2, 0.25]
    k = F.keep_fractions(imp, 0.7)
    assert sum(k) / len(k) == pytest.approx(0.7)
    order = sorted(range(5), key=lambda i: imp[i])
    assert [k[i] for i in order] == sorted(k)  # least important by angle keeps least
    assert F.keep_fractions(imp, 0.7, a=3.0)[1] < k[1]  # sharper: more uneven
    k = F.keep_fractions([0.0, 0.0, 0.0, 1.0], 0.9)  # would exceed 1: the spread shrinks
    assert max(k) == pytest.approx(1.0) and sum(k) / 4 == pytest.approx(0.9)


def test_least_important_blocks_lose_most_and_budget_is_exact():
    model = _llama()
    with torch.no_grad():  # block 2 barely turns its input: least important by angle
        model.model.layers[2].mlp.down_proj.weight.mul_(0.02)
        model.model.layers[2].self_attn.o_proj.weight.mul_(0.02)
    c0 = C.costs(model, get_adapter(model), C.geometry(model, get_adapter(model)))
    rep = _prune(model, _ids(), 0.2)
    ang = rep.settings["angular_distance"]
    widths = [b["intermediate"] for b in rep.settings["blocks"]]
    assert min(range(4), key=lambda i: ang[i]) == 2 and widths[2] == min(widths)
    for i in range(4):
        for j in range(4):
            if ang[i] < ang[j]:
                assert widths[i] <= widths[j]
    removed = 4 * 128 - sum(widths)
    assert removed == round(0.2 * c0.block * 4 / c0.channel)  # exact, in whole channels
    assert all(b["heads"] == 4 and b["kv_heads"] == 2 for b in rep.settings["blocks"])  # FFN only
    assert torch.isfinite(model(_ids()).logits).all()


def test_aligned_widths_and_reload_equality(tmp_path):
    from prunekit.structured.per_block import load_pretrained

    model = _llama()
    ids = _ids()
    rep = _prune(model, ids, 0.25, align=16)
    widths = [b["intermediate"] for b in rep.settings["blocks"]]
    assert all(w % 16 == 0 for w in widths) and len(set(widths)) > 1
    c0 = C.costs(_llama(), get_adapter(model), C.geometry(_llama(), get_adapter(model)))
    assert abs((4 * 128 - sum(widths)) - 0.25 * c0.block * 4 / c0.channel) <= 8  # within align/2
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)


def test_activation_score_option_changes_selection_not_budget():
    a, b = _llama(), _llama()
    ra, rb = _prune(a, _ids(), 0.2), _prune(b, _ids(), 0.2, score="activation")
    assert [x["intermediate"] for x in ra.settings["blocks"]] == [x["intermediate"] for x in rb.settings["blocks"]]
    wa = a.model.layers[0].mlp.down_proj.weight
    wb = b.model.layers[0].mlp.down_proj.weight
    assert wa.shape == wb.shape and not torch.equal(wa, wb)


# --- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity,args,msg", [
    (0.9, {}, "MLP channels only"), (0.2, {"align": 512}, "exceeds the MLP width"),
    (0.2, {"score": "x"}, "score"), (0.2, {"a": 0}, "setting a"),
])  # fmt: skip
def test_bad_input_is_one_line(sparsity, args, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        _prune(_llama(layers=2), _ids(), sparsity, **args)
    assert "\n" not in str(e.value)


def test_opt_fc1_fc2_are_pruned_and_reload(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    from prunekit.structured.per_block import load_pretrained

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64)).eval()
    ids = _ids()
    rep = _prune(model, ids, 0.2)
    widths = [b["intermediate"] for b in rep.settings["blocks"]]
    assert [layer.fc1.out_features for layer in model.model.decoder.layers] == widths
    assert rep.settings["block_sparsity"] == pytest.approx(0.2, abs=0.01)
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(tmp_path)(ids).logits, ref, rtol=0, atol=0)
