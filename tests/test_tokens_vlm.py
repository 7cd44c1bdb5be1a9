"""VFlowOpt (recycling) and LRS-VQA coarse-to-fine on a random-init tiny LLaVA: counts, keep=1, references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_tokens import _llava_inputs, make_llava

import prunekit as pk
from prunekit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def llava():
    return make_llava(image=16)


@pytest.mark.parametrize("method", ["vflowopt", "coarse-to-fine"])
def test_keep_one_is_identity_and_counts(llava, method):
    m = llava
    ids, px = _llava_inputs()
    with torch.no_grad():
        ref = m(input_ids=ids, pixel_values=px).logits
        pk.tokens.patch(m, method=method, keep=1.0)
        assert torch.equal(m(input_ids=ids, pixel_values=px).logits, ref)
        assert pk.tokens.unpatch(m)["removed"] == {}
        p = pk.tokens.patch(m, method=method, keep=0.25)
        out = m(input_ids=ids, pixel_values=px).logits
        gen = m.generate(input_ids=ids, pixel_values=px, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    keep = p._sess[p.method.layer].keep[0].tolist()
    s = pk.tokens.unpatch(m)
    K = 2 if method == "vflowopt" else 0
    assert s["removed"] == {K: 2 * 12}  # 16 image tokens, 4 kept, per prefill (forward + generate)
    assert out.shape[1] == 3 + 4 + 4 and gen.shape[1] == 23 + 3
    assert [j for j in keep if j < 3 or j >= 19] == [0, 1, 2, *range(19, 23)]  # all text kept
    assert len([j for j in keep if 3 <= j < 19]) == 4


def test_vflowopt_recycles_pruned_tokens_into_aggregates(llava):
    m = llava
    ids, px = _llava_inputs()
    lm = m.model.language_model
    seen = {}

    def grab(mod, a, out):  # the output of layer 1 = the un-shortened input of layer K=2
        seen.setdefault("full", (out[0] if isinstance(out, tuple) else out).clone())

    p = pk.tokens.patch(m, method="vflowopt", keep=0.5, layer=2, recycle=0.25)
    hb = lm.layers[1].register_forward_hook(grab)
    with torch.no_grad():
        m(input_ids=ids, pixel_values=px)
    hb.remove()
    sel = p._sess[2]
    keep = sel.keep[0]
    info = p.state["vflowopt"]
    pk.tokens.unpatch(m)
    assert info == {"kept": 8, "aggregates": 2, "recycled": 8}
    full = seen["full"][0]
    img = list(range(3, 19))
    kept_img = [j for j in keep.tolist() if 3 <= j < 19]
    dropped = [j for j in img if j not in kept_img]
    # reference: the 2 lowest-scored kept image tokens carry the means of their nearest pruned tokens
    score = sel.hidden  # the rows the hook hands to layer 2
    assert score.shape[1] == 7 + 8
    rows = {j: r for r, j in enumerate(keep.tolist())}
    changed = [j for j in kept_img if not torch.equal(score[0, rows[j]], full[j])]
    assert len(changed) == 2
    carriers = torch.stack([full[j] for j in changed])
    nearest = (F.normalize(full[dropped], dim=-1) @ F.normalize(carriers, dim=-1).T).argmax(-1)
    for ci, j in enumerate(changed):
        group = [full[j]] + [full[d] for d, n in zip(dropped, nearest.tolist()) if n == ci]
        assert torch.allclose(score[0, rows[j]], torch.stack(group).mean(0), atol=1e-5)


def test_coarse_to_fine_keeps_fine_tokens_in_the_best_regions():
    m = make_llava(image=64)  # an 8×8 grid: region=4 gives 4 regions of 16 tokens
    ids, px = _llava_inputs(image=64)
    emb = {}
    lm = m.model.language_model

    def grab(mod, a, kw):
        emb.setdefault("h", (a[0] if a else kw["hidden_states"]).clone())

    h = lm.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    p = pk.tokens.patch(m, method="coarse-to-fine", keep=0.125, region=4)
    with torch.no_grad():
        m(input_ids=ids, pixel_values=px)
    h.remove()
    keep = p._sess[0].keep[0].tolist()
    regions = p.state["coarse-to-fine"]["regions"][0]
    pk.tokens.unpatch(m)
    x = emb["h"][0].float()
    vis = torch.zeros(x.shape[0], dtype=torch.bool)
    vis[3:67] = True
    hn = F.normalize(x, dim=-1)
    t = (hn[3:67] @ hn[~vis].T).max(-1).values  # [64]
    rid = torch.tensor([(j // 8) // 4 * 2 + (j % 8) // 4 for j in range(64)])
    S_r = torch.stack([t[rid == r].mean() for r in range(4)])
    assert regions == S_r.argsort(descending=True)[:1].tolist()  # 8 kept: one 16-token region holds ≥ 2·8
    best = [j for j in range(64) if rid[j] == regions[0]]
    want = sorted(3 + j for j in sorted(best, key=lambda j: -float(t[j]))[:8])
    assert [j for j in keep if 3 <= j < 67] == want


@pytest.mark.parametrize("kw,match", [
    ({"method": "vflowopt", "keep": 0}, "keep=0 is outside"), ({"method": "vflowopt", "layer": 0}, "layer=0 is outside"),
    ({"method": "vflowopt", "recycle": 2}, "recycle=2 is outside"), ({"method": "vflowopt", "recovery": "merge"}, "always recycles"),
    ({"method": "coarse-to-fine", "region": 0}, "region=0 is not a positive"), ({"method": "coarse-to-fine", "layer": 9}, "layer=9 is outside"),
])  # fmt: skip
def test_bad_input_is_one_line(llava, kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        pk.tokens.patch(llava, **kw)
    assert "\n" not in str(e.value)


def test_text_model_and_non_square_grid_are_one_line():
    from conftest import make_llama

    with pytest.raises(ConfigError, match="no image-token span") as e:
        pk.tokens.patch(make_llama(), method="coarse-to-fine", keep=0.5)
    assert "\n" not in str(e.value)
    m = make_llama()  # a text LM given an image token id: a 12-token "image" span is no square grid
    ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, 12), 383), torch.tensor([[7, 8]])], 1)
    pk.tokens.patch(m, method="coarse-to-fine", keep=0.5, image_token_id=383)
    with pytest.raises(DataError, match="12 tokens, not a square grid") as e, torch.no_grad():
        m(input_ids=ids)
    assert "\n" not in str(e.value)
    pk.tokens.unpatch(m)
