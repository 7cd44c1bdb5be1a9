"""The method guide (issue 17): docs/METHODS.md and its data cannot drift from the registry or
the benchmark results; recommend() picks registered methods by measured numbers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import prunekit.guide as G
from prunekit.engine.stats import Stat
from prunekit.errors import ConfigError
from prunekit.methods import METHODS, ScoreMethod, list_methods
from prunekit.structured import STRUCTURED_METHODS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "METHODS.md"
RESULTS = REPO / "benchmarks" / "results"
needs_results = pytest.mark.skipif(not RESULTS.is_dir(), reason="no benchmarks/results (installed package)")
EMPTY = {"protocols": [], "structured_speedup": []}


def _script():
    spec = importlib.util.spec_from_file_location("bench_guide", REPO / "benchmarks" / "guide.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc_methods(text: str) -> list[str]:
    body = re.search(r"<!-- generated:methods -->\n(.*?)<!-- /generated -->", text, re.S).group(1)
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", body, re.M)]


# ------------------------------------------------------------------------- the document
def test_document_lists_every_registered_method():
    assert _doc_methods(DOC.read_text()) == list_methods()


@needs_results
def test_generated_sections_are_what_the_script_writes_now():
    bg = _script()
    text = DOC.read_text()
    now = {k: v.rstrip() for k, v in bg.sections().items()}
    assert bg.extract_sections(text) == now
    assert bg.apply_sections(text, now) == text  # regeneration keeps the prose


@needs_results
def test_packaged_data_equals_benchmark_results():
    packaged = json.loads(G.DATA_FILE.read_text())
    assert packaged == G.build_data(RESULTS)
    assert packaged["protocols"], "no protocol read from benchmarks/results"


def test_apply_sections_keeps_prose_and_rejects_unknown_markers():
    bg = _script()
    text = "intro\n<!-- generated:speed -->\nold\n<!-- /generated -->\noutro\n"
    assert bg.apply_sections(text, {"speed": "new"}) == "intro\n<!-- generated:speed -->\nnew\n<!-- /generated -->\noutro\n"
    with pytest.raises(SystemExit, match="unknown generated section"):
        bg.apply_sections(text.replace("speed", "nope"), {"speed": "x"})


# ------------------------------------------------------------------------- recommend()
@pytest.mark.parametrize("data", [None, EMPTY], ids=["measured", "no-data"])
@pytest.mark.parametrize("goal", G.GOALS)
def test_every_goal_recommends_a_registered_method(goal, data):
    rec = G.recommend(goal, data=data)
    assert rec.method in list_methods()
    assert (rec.method in STRUCTURED_METHODS) == (goal in ("speed", "decode"))
    assert rec.method in rec.command
    assert json.loads(json.dumps(rec.to_dict()))["method"] == rec.method


def _cell(d: Path, method: str, kind: str, sparsity: float, ppl: float, pattern: str | None = None) -> None:
    pat = pattern or kind
    key = f"prunekit__{method}__{pat.replace(':', 'of')}-{int(sparsity * 100)}"
    (d / f"{key}.json").write_text(json.dumps({
        "status": "ok", "cell": {"tool": "prunekit", "method": method, "kind": kind,
                                 "pattern": pat, "sparsity": sparsity},
        "prune": {"prune_wall_s": 1.0, "prune_cpu_s": 1.0, "peak_rss_mb": 10.0},
        "eval": {"perplexity": ppl, "params": 1_000_000},
    }))  # fmt: skip


def _results(tmp_path: Path, cells: list[tuple]) -> Path:
    d = tmp_path / "results" / "tiny_protocol"
    d.mkdir(parents=True)
    (d / "protocol.json").write_text(json.dumps({
        "protocol": {"model": "tiny", "calib_source": "/x/c4", "nsamples": 4, "seqlen": 64, "seed": 0,
                     "eval_seqlen": 64, "eval_windows": 2},
        "routine": {"nsamples": 32, "seqlen": 2048, "eval_windows": 40}}))  # fmt: skip
    (d / "dense.json").write_text(json.dumps({"status": "ok", "eval": {"perplexity": 10.0}}))
    for c in cells:
        _cell(d, *c)
    return tmp_path / "results"


def test_recommendation_follows_the_results_folder(tmp_path):
    res = _results(tmp_path, [("wanda", "unstructured", 0.5, 30.0), ("sparsegpt", "unstructured", 0.5, 60.0),
                              ("wanda", "nm", 0.5, 90.0, "2:4"), ("sparsegpt", "nm", 0.5, 80.0, "2:4"),
                              ("llm-pruner", "structured", 0.2, 40.0), ("flap", "structured", 0.2, 50.0)])
    data = G.build_data(res)
    assert G.recommend("quality", data=data).method == "wanda"
    assert G.recommend("2:4", data=data).method == "sparsegpt"
    speed = G.recommend("speed", 0.2, data=data)
    assert speed.method == "llm-pruner"
    assert [e["method"] for e in speed.evidence] == ["llm-pruner", "flap"]
    flipped = G.build_data(_results(tmp_path / "b", [("wanda", "unstructured", 0.5, 60.0),
                                                       ("sparsegpt", "unstructured", 0.5, 30.0)]))
    assert G.recommend("quality", data=flipped).method == "sparsegpt"


def test_near_ties_and_unmeasured_budgets_are_flagged(tmp_path):
    data = G.build_data(_results(tmp_path, [("wanda", "unstructured", 0.5, 30.0),
                                            ("sparsegpt", "unstructured", 0.5, 30.3)]))
    rec = G.recommend("quality", 0.7, data=data)
    assert any("tie" in n for n in rec.notes)
    assert any("measured at 50%" in n and "70%" in n for n in rec.notes)
    assert "--sparsity 0.7" in rec.command


def test_two_four_ignores_budget_and_carries_the_kernel_note():
    rec = G.recommend("2:4", 0.3, data=EMPTY)
    assert rec.pattern == "2:4" and rec.sparsity == 0.5
    assert any("ignored" in n for n in rec.notes)
    assert any("vllm#36799" in n for n in rec.notes)


def test_domain_and_recover_say_what_is_missing():
    dom = G.recommend("domain", data=EMPTY)
    assert "--calib path/to/your-domain.jsonl" in dom.command
    assert "dpruner" in G.registered_methods()  # registered, so the guide points at it
    assert any("D-Pruner" in n and "--method dpruner" in n for n in dom.notes)
    assert not any("not yet implemented" in n for n in dom.notes)
    rec = G.recommend("recover", data=EMPTY)
    if not G.has_recover_command():
        assert "not yet implemented" in rec.notes[0]


@pytest.mark.parametrize("goal,hint", [("sped", "'speed'"), ("qualty", "'quality'"), ("2:5", "'2:4'")])
def test_unknown_goal_is_a_one_line_config_error_with_a_hint(goal, hint):
    with pytest.raises(ConfigError) as e:
        G.recommend(goal)
    msg = str(e.value)
    assert "\n" not in msg and repr(goal) in msg and f"did you mean {hint}" in msg


@pytest.mark.parametrize("budget", [0, 0.0, 1, 1.5, -0.2, math.nan, True, "0.2"])
def test_budget_outside_open_unit_interval_is_a_config_error(budget):
    with pytest.raises(ConfigError) as e:
        G.recommend("speed", budget)
    assert "\n" not in str(e.value) and repr(budget) in str(e.value)
    with pytest.raises(ConfigError):
        G.render_guide(None, budget)


# ------------------------------------------------------------------------- new methods
@dataclass(frozen=True)
class _Unlisted(ScoreMethod):
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})
    summary: ClassVar[str] = "a method nobody wrote a guide entry for"

    def score(self, weight, stats):
        return weight.abs()


def _unlisted_structured(model, config, calib, tokenizer=None, progress=True):  # pragma: no cover
    raise NotImplementedError


@pytest.fixture
def unlisted(monkeypatch):
    monkeypatch.setitem(METHODS._items, "zz-unlisted", _Unlisted)
    monkeypatch.setitem(STRUCTURED_METHODS._items, "zz-unlisted-sp", _unlisted_structured)
    return ["zz-unlisted", "zz-unlisted-sp"]


def test_a_method_without_metadata_still_appears_and_renders(unlisted):
    assert set(unlisted) <= set(list_methods())
    u, s = G.method_info("zz-unlisted"), G.method_info("zz-unlisted-sp")
    assert not u.has_entry and u.speedup == "specific" and "Hessian" in u.statistics
    assert not s.has_entry and s.speedup == "universal" and s.structured
    assert G.NO_ENTRY in u.criterion and G.NO_ENTRY in s.paper
    text = G.render_guide()
    assert "zz-unlisted " in text and "zz-unlisted-sp" in text
    section = _script().methods_section()
    assert _doc_methods(f"<!-- generated:methods -->\n{section}\n<!-- /generated -->") == list_methods()
    assert "no guide entry yet" in section


def test_unknown_method_info_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'wanda'"):
        G.method_info("wandaa")


# ------------------------------------------------------------------------- CLI hooks
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prunekit")
    G.add_recommend_parser(ap.add_subparsers(dest="cmd"))
    return ap


def test_recommend_subcommand_json_and_text(capsys):
    a = _parser().parse_args(["recommend", "--goal", "quality", "--budget", "0.5", "--json"])
    out = G.cmd_recommend(a)
    assert out["method"] in list_methods() and out["goal"] == "quality"
    assert capsys.readouterr().out == ""  # --json: the CLI prints the returned dict itself
    a = _parser().parse_args(["recommend", "--goal", "speed"])
    out = G.cmd_recommend(a)
    printed = capsys.readouterr().out
    assert out["method"] in STRUCTURED_METHODS and f"goal speed: {out['method']}" in printed


def test_recommend_without_goal_prints_the_whole_guide(capsys):
    out = G.cmd_recommend(_parser().parse_args(["recommend"]))
    printed = capsys.readouterr().out
    assert set(out["goals"]) == set(G.GOALS)
    assert [m["name"] for m in out["methods"]] == list_methods()
    for g in G.GOALS:
        assert f"goal {g}:" in printed
    assert G.guide_text().splitlines()[0] == printed.splitlines()[0]


def test_load_data_falls_back_to_the_packaged_file(monkeypatch, tmp_path):
    monkeypatch.setattr(G, "REPO_RESULTS", tmp_path / "absent")
    assert G.load_data() == json.loads(G.DATA_FILE.read_text())
    monkeypatch.setattr(G, "DATA_FILE", tmp_path / "absent.json")
    assert G.load_data() == EMPTY
    assert G.recommend("quality").method in list_methods()


# ------------------------------------------------------------------------- --goal decode
def _decoding(rows: dict[str, dict[str, float]], target: str = "toy", identical: int = 2) -> dict:
    return {"file": "run_x.json", "target": target, "dtype": "float32", "tree": 4, "lookup": "2:10",
            "new_tokens": 32, "drafts": {}, "command": "benchmarks/decoding.py run ...",
            "rows": {m: {t: {"speedup": v, "identical": identical, "prompts": 2, "tau": 2.0} for t, v in c.items()}
                     for m, c in rows.items()}}


def test_decode_goal_picks_the_pruned_draft_with_the_best_median_speedup():
    rows = {"pk-model:shortgpt50": {"a": 0.6, "b": 0.7, "c": 0.5},
            "pk-rasd:flap30": {"a": 1.9, "b": 0.2, "c": 1.1},   # best mean would mislead: median 1.1
            "pk-rasd:cfsp50": {"a": 1.2, "b": 1.3, "c": 1.25},  # median 1.25: the answer
            "pk-rasd:qwen0.5b": {"a": 9.0, "b": 9.0, "c": 9.0},  # not a pruned draft: never the answer
            "pk-lookup": {"a": 2.0, "b": 2.0, "c": 2.0}, "hf-lookup": {"a": 3.0, "b": 3.0, "c": 3.0}}
    data = {**EMPTY, "decoding": [_decoding(rows), _decoding({"pk-lookup": {"a": 7.0}}, target="other")]}
    rec = G.recommend("decode", data=data)
    assert (rec.method, rec.sparsity, rec.pattern) == ("cfsp", 0.5, "structured")
    assert "median 1.25x" in rec.summary and "--method cfsp --sparsity 0.5" in rec.command
    assert "--lookup 2:10" in rec.command  # RASD: the draft with retrieval
    assert rec.alternatives[0].startswith("pk-rasd:flap30 1.10x")
    assert any("pk-lookup on toy" in n and "2.00x" in n for n in rec.notes)  # same target only, prunekit's own


def test_decode_goal_refuses_a_budget_and_falls_back_without_runs():
    with pytest.raises(ConfigError, match="--budget does not apply to --goal decode"):
        G.recommend("decode", 0.3, data=EMPTY)
    rec = G.recommend("draft", data=EMPTY)  # alias
    assert rec.method == "shortgpt" and "no measured decoding runs" in rec.summary


@needs_results
def test_decode_goal_reads_the_committed_decoding_runs():
    data = G.build_data(RESULTS)
    assert data["decoding"], "no benchmarks/results/decoding/run_*.json read"
    rec = G.recommend("decode", data=data)
    assert rec.method in STRUCTURED_METHODS and "over plain greedy" in rec.summary
