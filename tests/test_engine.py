import pytest
import torch

from prunekit.engine import Stat, StatCollector, capture_block_inputs, run_layerwise
from prunekit.models import get_adapter


def test_capture_gets_all_block_kwargs(tiny_llama, calib_ids):
    caps = capture_block_inputs(tiny_llama, get_adapter(tiny_llama), calib_ids, batch_size=3)
    assert [c.hidden.shape[0] for c in caps] == [3, 3, 2]
    kw = caps[0].kwargs
    assert "position_embeddings" in kw and kw["use_cache"] is False
    # replaying block 0 with the captured inputs reproduces the model's own block-0 output
    seen = {}
    h = tiny_llama.model.layers[0].register_forward_hook(lambda m, a, o: seen.setdefault("o", o))
    tiny_llama(input_ids=calib_ids[:3])
    h.remove()
    out = tiny_llama.model.layers[0](caps[0].hidden, **kw)
    out = out[0] if isinstance(out, tuple) else out
    ref = seen["o"][0] if isinstance(seen["o"], tuple) else seen["o"]
    assert torch.allclose(out, ref, atol=1e-6)


def test_streaming_stats_equal_one_batch():
    lin = torch.nn.Linear(6, 3)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 7, 6, generator=g) * 3 + 1
    needs = {Stat.INPUT_SQNORM, Stat.HESSIAN, Stat.INPUT_MEAN, Stat.INPUT_VAR}
    with StatCollector({"l": lin}, needs) as c:
        for i in range(5):
            lin(X[i : i + 1])
            c.end_batch()
    st = c.results()["l"]
    flat = X.reshape(-1, 6)
    assert st.num_tokens == 35
    torch.testing.assert_close(st[Stat.INPUT_SQNORM], flat.pow(2).sum(0))
    torch.testing.assert_close(st[Stat.HESSIAN], 2 * flat.T @ flat / 35)
    torch.testing.assert_close(st[Stat.INPUT_MEAN], flat.mean(0))
    torch.testing.assert_close(st[Stat.INPUT_VAR], flat.var(0, unbiased=False))


@pytest.mark.parametrize("width", [515, 1030])  # above the panel threshold, not multiples of 4
def test_wide_hessian_is_full_and_symmetric(width):
    """Wide inputs accumulate only the lower block triangle; the result must be the full XᵀX."""
    lin = torch.nn.Linear(width, 2)
    X = torch.randn(3, 40, width, generator=torch.Generator().manual_seed(1))
    with StatCollector({"l": lin}, {Stat.HESSIAN}) as c:
        for i in range(3):
            lin(X[i : i + 1])
            c.end_batch()
    H = c.results()["l"][Stat.HESSIAN]
    flat = X.reshape(-1, width)
    torch.testing.assert_close(H, 2 * flat.T @ flat / 120, rtol=1e-4, atol=1e-4)
    assert torch.equal(H, H.T)


def test_shared_inputs_share_one_accumulator(tiny_llama, calib_ids):
    attn = tiny_llama.model.layers[0].self_attn
    mods = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj}
    caps = capture_block_inputs(tiny_llama, get_adapter(tiny_llama), calib_ids, 4)
    with StatCollector(mods, {Stat.HESSIAN}) as c:
        for inp in caps:
            tiny_llama.model.layers[0](inp.hidden, **inp.kwargs)
            c.end_batch()
    st = c.results()
    assert st["q"][Stat.HESSIAN] is st["k"][Stat.HESSIAN] is st["v"][Stat.HESSIAN]
    assert st["o"][Stat.HESSIAN] is not st["q"][Stat.HESSIAN]
    assert st["q"].num_tokens == calib_ids.numel()


def test_propagation_uses_pruned_outputs(tiny_llama, calib_ids):
    """Block 1 must see block 0's *pruned* outputs (default) or its dense ones (propagate=dense)."""
    adapter = get_adapter(tiny_llama)
    seen: dict[str, list] = {"pruned": [], "dense": []}

    def zero_block0(i, targets, stats):
        if i == 0:
            for lin in targets.values():
                lin.weight.data.zero_()

    for mode in ("pruned", "dense"):
        model = type(tiny_llama)(tiny_llama.config).eval()
        model.load_state_dict(tiny_llama.state_dict())
        h = model.model.layers[1].register_forward_pre_hook(lambda m, a, k, mode=mode: seen[mode].append(a[0] if a else k["hidden_states"]), with_kwargs=True)
        run_layerwise(model, adapter, calib_ids, needs=set(), select=lambda n, m: True,
                      on_block=zero_block0, propagate=mode)  # fmt: skip
        h.remove()
    emb = tiny_llama.model.embed_tokens(calib_ids)
    # with block 0 zeroed, its residual output equals its input: the embeddings
    assert torch.allclose(seen["pruned"][0], emb[: seen["pruned"][0].shape[0]], atol=1e-6)
    assert not torch.allclose(seen["dense"][0], emb[: seen["dense"][0].shape[0]], atol=1e-3)


def _count_calls(model, suffix):
    calls = {"n": 0}
    handles = [m.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
               for n, m in model.named_modules() if n.endswith(suffix)]  # fmt: skip
    return calls, handles


def test_stats_pass_stops_after_last_target_with_identical_statistics(tiny_llama, calib_ids):
    """The statistics pass never runs down_proj (its output is thrown away), and the Hessians it
    yields equal those of a full forward over the same block inputs."""
    adapter = get_adapter(tiny_llama)
    nblocks, nbatches = len(tiny_llama.model.layers), -(-calib_ids.shape[0] // 3)
    caps = capture_block_inputs(tiny_llama, adapter, calib_ids, batch_size=3)
    block0 = tiny_llama.model.layers[0]
    mods = {n: m for n, m in block0.named_modules() if isinstance(m, torch.nn.Linear)}
    with StatCollector(mods, {Stat.HESSIAN}) as ref:  # full forwards
        for c in caps:
            block0(c.hidden, **c.kwargs)
            ref.end_batch()
    ref_h = {n: s[Stat.HESSIAN] for n, s in ref.results().items()}

    got = {}

    def on_block(i, targets, stats):
        if i == 0:
            got.update({n.split("layers.0.")[1]: s[Stat.HESSIAN] for n, s in stats.items()})

    down, hd = _count_calls(tiny_llama, "mlp.down_proj")
    q, hq = _count_calls(tiny_llama, "self_attn.q_proj")
    run_layerwise(tiny_llama, adapter, calib_ids, needs={Stat.HESSIAN}, select=lambda n, m: True,
                  on_block=on_block, batch_size=3)  # fmt: skip
    for h in hd + hq:
        h.remove()
    assert down["n"] == nblocks * nbatches + 1  # propagation pass + block 0's probing batch
    assert q["n"] == 2 * nblocks * nbatches  # statistics pass + propagation pass
    assert got.keys() == ref_h.keys()
    for n in ref_h:
        assert torch.allclose(got[n], ref_h[n], rtol=1e-5, atol=1e-6), n


def test_no_statistics_means_one_pass_and_dense_propagation_keeps_two(tiny_llama, calib_ids):
    adapter = get_adapter(tiny_llama)
    nblocks, nbatches = len(tiny_llama.model.layers), -(-calib_ids.shape[0] // 3)
    for propagate, passes in (("pruned", 1), ("dense", 1)):
        q, hq = _count_calls(tiny_llama, "self_attn.q_proj")
        run_layerwise(tiny_llama, adapter, calib_ids, needs=set(), select=lambda n, m: True,
                      on_block=lambda *a: None, batch_size=3, propagate=propagate)  # fmt: skip
        for h in hq:
            h.remove()
        assert q["n"] == passes * nblocks * nbatches, propagate
    # dense propagation with statistics: one full pass whose outputs are reused, down_proj included
    down, hd = _count_calls(tiny_llama, "mlp.down_proj")
    run_layerwise(tiny_llama, adapter, calib_ids, needs={Stat.INPUT_SQNORM}, select=lambda n, m: True,
                  on_block=lambda *a: None, batch_size=3, propagate="dense")  # fmt: skip
    for h in hd:
        h.remove()
    assert down["n"] == nblocks * nbatches


class _ReentrantBlock(torch.nn.Module):
    """A block that calls one of its Linears twice (weight sharing): early stop must stay off."""

    def __init__(self, d):
        super().__init__()
        self.a, self.b = torch.nn.Linear(d, d), torch.nn.Linear(d, d)

    def forward(self, h, **_kw):
        return h + self.a(torch.tanh(self.b(self.a(h))))


class _ToyLM(torch.nn.Module):
    def __init__(self, d=8, n=2):
        super().__init__()
        self.emb = torch.nn.Embedding(50, d)
        self.layers = torch.nn.ModuleList(_ReentrantBlock(d) for _ in range(n))

    def forward(self, input_ids, use_cache=False):
        h = self.emb(input_ids)
        for blk in self.layers:
            h = blk(h)
        return h


def test_target_called_twice_disables_early_stop():
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = _ToyLM()
    adapter = SimpleNamespace(blocks=lambda m: m.layers, block_prefix=lambda i: f"layers.{i}")
    ids = torch.randint(0, 50, (6, 5))
    h0 = model.emb(ids).detach()
    blk = model.layers[0]
    with StatCollector({"a": blk.a, "b": blk.b}, {Stat.HESSIAN}) as ref:
        for c in (h0[:3], h0[3:]):
            blk(c)
            ref.end_batch()
    ref_h = ref.results()
    got = {}

    def on_block(i, targets, stats):
        if i == 0:
            got.update({n.rsplit(".", 1)[1]: s for n, s in stats.items()})

    run_layerwise(model, adapter, ids, needs={Stat.HESSIAN}, select=lambda n, m: True,
                  on_block=on_block, batch_size=3)  # fmt: skip
    assert got["a"].num_tokens == ref_h["a"].num_tokens == 2 * 6 * 5  # both calls, every batch
    torch.testing.assert_close(got["a"][Stat.HESSIAN], ref_h["a"][Stat.HESSIAN])


def test_stats_complete_is_not_an_exception():
    """A model's ``except Exception`` fallback must not swallow the early-stop signal."""
    from prunekit.engine import StatsComplete

    assert not issubclass(StatsComplete, Exception)
