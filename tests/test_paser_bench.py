"""The arithmetic of benchmarks/paser.py (degradation, gap closed, bootstrap, selection stats, the
section's verdict) on hand-made inputs; the benchmark itself runs SmolLM2 and is not a unit test."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

_SPEC = importlib.util.spec_from_file_location("paser_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "paser.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _ev(gsm: float, wiki: float, acc: float, per_q=None) -> dict:
    return {"gsm8k": {"perplexity": gsm, "per_question": per_q or [[1.0, 1]]}, "wikitext2": {"perplexity": wiki},
            "piqa": {"acc": acc, "acc_norm": acc, "acc_stderr": 0.01, "acc_norm_stderr": 0.01, "n": 100}}  # fmt: skip


def test_degradation_is_relative_nll_increase_and_above_chance_accuracy_loss():
    d = bench.degradation(_ev(4.0, 20.0, 0.64), _ev(16.0, 80.0, 0.57))
    assert d["gsm8k"] == pytest.approx(math.log(16) / math.log(4) - 1)  # = 1.0
    assert d["wikitext2"] == pytest.approx(math.log(80) / math.log(20) - 1)
    assert d["piqa"] == pytest.approx(0.07 / 0.14)
    assert max(d, key=d.get) == "gsm8k"  # the same 4x ratio costs more of a small NLL


def test_gap_closed_endpoints_and_direction():
    assert bench.gap_closed(10.0, 40.0, 10.0) == pytest.approx(1.0)
    assert bench.gap_closed(10.0, 40.0, 40.0) == pytest.approx(0.0)
    assert bench.gap_closed(10.0, 40.0, 20.0) == pytest.approx(0.5)  # half the log gap
    assert bench.gap_closed(0.64, 0.58, 0.61, log=False) == pytest.approx(0.5)
    assert bench.gap_closed(0.64, 0.70, 0.80, log=False) < 0  # "recovered" away from dense
    assert math.isnan(bench.gap_closed(5.0, 5.0, 4.0))


def test_paired_bootstrap_sign_and_certainty():
    b = [(2.0 + 0.1 * i, 10) for i in range(30)]
    a = [(s - 1.0, c) for s, c in b]  # better on every question
    r = bench.paired_bootstrap(a, b, n=200)
    assert r["log_ppl_diff"] == pytest.approx(-0.1)
    assert r["p_a_better"] == 1.0 and r["ci95"][1] < 0
    same = bench.paired_bootstrap(b, b, n=50)
    assert same["log_ppl_diff"] == 0.0 and same["p_a_better"] == 0.0


def test_selection_stats_counts_clusters_and_gsm8k_share():
    labels = [0, 0, 1, 1, 1]
    is_gsm = [True, True, False, False, True]
    jsd = [0.4, 0.2, 0.1, 0.1, 0.3]
    s = bench.selection_stats(SimpleNamespace(indices=[0, 2, 4]), labels, is_gsm, jsd, [10, 20, 30, 40, 50])
    assert s["selected"] == 3 and s["gsm8k_selected"] == 2 and s["tokens"] == 90
    assert s["gsm8k_fraction"] == pytest.approx(2 / 3) and s["mean_jsd"] == pytest.approx(0.8 / 3)
    assert s["clusters"]["0"] == {"size": 2, "gsm8k_fraction": 1.0, "mean_jsd": pytest.approx(0.3), "selected": 1}
    assert s["clusters"]["1"]["selected"] == 2 and s["clusters"]["1"]["gsm8k_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("paser_gsm, verdict", [(6.0, "met"), (9.0, "missed")])
def test_section_states_the_verdict_on_the_worst_capability(tmp_path, paser_gsm, verdict):
    ev = {"dense": _ev(4.0, 20.0, 0.64), "pruned": _ev(16.0, 80.0, 0.60), "random": _ev(8.0, 40.0, 0.61),
          "paser": _ev(paser_gsm, 45.0, 0.61)}  # fmt: skip
    deg = bench.degradation(ev["dense"], ev["pruned"])
    sel = {"selected": 2, "gsm8k_fraction": 0.5, "tokens": 100, "mean_jsd": 0.1,
           "clusters": {"0": {"size": 2, "gsm8k_fraction": 0.5, "mean_jsd": 0.1, "selected": 2}}}  # fmt: skip
    res = {
        "args": {"method": "sparsegpt", "pattern": "2:4", "sparsity": 0.5, "calib_windows": 8, "calib_seqlen": 2048,
                 "seed": 0, "budget": 2, "gsm8k_questions": 1, "wiki_windows": 10, "piqa_limit": 100},
        "models": {m: {"eval": e} for m, e in ev.items()},
        "recovery_config": {"r": 8, "alpha": 16.0, "dropout": 0.05, "lr": 5e-4, "tokens": 1024, "batch_size": 2,
                            "seqlen": 512, "seed": 0},
        "pool": {"gsm8k": 2, "c4": 2, "tokens_gsm8k": 50, "tokens_c4": 50},
        "selection": {"paser": {**sel, "seconds": 1.0, "summary": {"embedder": "minilm", "clusters": {"0": {"size": 2}}}},
                      "random": sel, "pool_mean_jsd": {"gsm8k": 0.1, "c4": 0.1}},
        "verdict": {"degradation": deg, "degraded_most": max(deg, key=deg.get),
                    "gap_closed": {m: {c: 0.5 for c in bench.CAPS} for m in ("random", "paser")},
                    "paser_beats_random": {"gsm8k": paser_gsm < 8.0, "wikitext2": False, "piqa": False},
                    "gsm8k_bootstrap_paser_vs_random": {"log_ppl_diff": 0.0, "ci95": [0.0, 0.0], "p_a_better": 0.5}},
        "wall_seconds": 60.0, "prune": {"cached": None},
    }  # fmt: skip
    out = tmp_path / "s.md"
    bench.write_section(res, out)
    text = out.read_text()
    assert text.startswith("## ")
    assert sum(line.startswith("|") for line in text.splitlines()) == 6  # header, rule, four models
    assert f"GSM8K-test answer perplexity): **{verdict}**" in text
    var = json.loads(json.dumps(res))  # a --signal variant whose PASER row wins where the main one lost
    var["args"].update(signal="nll-ratio")
    var["models"]["paser"]["eval"] = _ev(7.0, 45.0, 0.61)
    var["verdict"]["paser_beats_random"]["gsm8k"] = True
    var["reused_from"] = "/x/base.json"
    bench.write_section(res, out, variant=var)
    both = out.read_text()
    assert both.startswith(text.rsplit("\n\nReproduce:", 1)[0])  # the main run's text is unchanged
    assert sum(line.startswith("|") for line in both.splitlines()) == 9
    assert "| pruned + LoRA on the PASER (nll-ratio) selection | 7.000 |" in both
    assert "Target with the variant (GSM8K-test answer perplexity): **met** (7.000 vs 8.000)" in both
    assert "--signal nll-ratio --reuse base.json" in both
    assert "candidates are embedded (all-MiniLM-L6-v2 embeddings)" in both
    assert "same pool, all-MiniLM-L6-v2 embeddings, clusters, budget and LoRA" in both
    var["selection"]["paser"]["summary"]["embedder"] = "model"  # a run that fell back to the model's states
    bench.write_section(res, out, variant=var)
    assert ("but the pruned model's own mean-pooled hidden states where the run above used all-MiniLM-L6-v2 "
            "embeddings, so the clusters differ") in out.read_text()


def test_reuse_refuses_a_run_with_other_settings(tmp_path):
    base = vars(bench.build_parser().parse_args([]))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"args": {**base, "budget": 64}, "finished": "x", "models": {}}))
    a = bench.build_parser().parse_args(["--signal", "nll-ratio", "--reuse", str(old)])
    a.pattern = a.pattern or None
    with pytest.raises(SystemExit, match=r"settings differ .*'budget': \(64, 32\)"):
        bench.reused_measurements(a)
    old.write_text(json.dumps({"args": base, "finished": "x", "models": {m: {"eval": m} for m in bench.MODELS}}))
    got = bench.reused_measurements(a)
    assert got == {"dense": {"eval": "dense"}, "random": {"eval": "random"}, "_pruned_before": {"eval": "pruned"}}
    older = {k: v for k, v in base.items() if k != "embedder"}  # a run from before --embedder: its recorded one counts
    for recorded, ok in (("minilm", True), ("model", False)):
        old.write_text(json.dumps({"args": older, "finished": "x", "models": {m: {"eval": m} for m in bench.MODELS},
                                   "selection": {"paser": {"summary": {"embedder": recorded}}}}))  # fmt: skip
        if ok:
            assert bench.reused_measurements(a)["dense"] == {"eval": "dense"}
        else:
            with pytest.raises(SystemExit, match=r"'embedder': \('model', 'minilm'\)"):
                bench.reused_measurements(a)
    auto = bench.build_parser().parse_args(["--signal", "nll-ratio", "--embedder", "auto", "--reuse", str(old)])
    auto.pattern = auto.pattern or None  # auto resolves to MiniLM here (`prunekit[paser]` is installed for the tests)
    with pytest.raises(SystemExit, match=r"'embedder': \('model', 'minilm'\)"):
        bench.reused_measurements(auto)


def test_reproduce_command_lists_only_the_flags_that_differ():
    args = vars(bench.build_parser().parse_args([]))
    assert bench.reproduce_command(args) == "OMP_NUM_THREADS=1 python benchmarks/paser.py"
    args.update(budget=7, pattern=None)
    assert bench.reproduce_command(args) == "OMP_NUM_THREADS=1 python benchmarks/paser.py --pattern '' --budget 7"
