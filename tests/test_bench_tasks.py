"""Zero-shot tasks in the benchmark harness: ``eval_cell.py --tasks`` scores a saved folder with the
library's ``evaluate_tasks`` (the same numbers), and the report lists the scored cells."""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.eval.tasks import evaluate_tasks

REPO = Path(__file__).resolve().parents[1]
ROUTINE = REPO / "benchmarks" / "results" / "smollm2-135m_c4-sample-32x2048-s0_wikitext2-test-40x2048"
WORDS = "the a cat dog runs jumps over under red blue water fire stone tree bird".split()


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _piqa(path: Path) -> Path:
    rng = random.Random(0)
    s = lambda lo, hi: " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))  # noqa: E731
    rows = [{"goal": s(3, 8), "sol1": s(2, 9), "sol2": s(2, 9), "label": i % 2} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_cell_scores_tasks_like_the_library(tiny_llama_dir, tokenizer, tmp_path):
    piqa = _piqa(tmp_path / "piqa.jsonl")
    ids = tmp_path / "ids.pt"
    torch.save(torch.randint(0, 384, (1, 64), generator=torch.Generator().manual_seed(0)), ids)
    out = tmp_path / "eval.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "cells" / "eval_cell.py"), "--model", str(tiny_llama_dir),
           "--eval-ids", str(ids), "--seqlen", "32", "--windows", "2", "--result", str(out), "--threads", "1",
           "--tasks", f"piqa:{piqa}"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    got = json.loads(out.read_text())["tasks"]["piqa"]
    model, _ = pk.load_model(str(tiny_llama_dir))
    want = evaluate_tasks(model, tokenizer, f"piqa:{piqa}", progress=False)["piqa"]
    assert got["n"] == want["n"] == 10
    assert got["metrics"] == pytest.approx(want["metrics"], abs=1e-12)


@pytest.mark.skipif(not (ROUTINE / "protocol.json").is_file(), reason="no routine-protocol results here")
def test_report_lists_the_scored_cells_and_only_those():
    rep = _report()
    P = rep.load_protocol(ROUTINE)
    P = {**P, "cells": copy.deepcopy(P["cells"]), "dense": copy.deepcopy(P["dense"])}
    P["dense"]["eval"].pop("tasks", None)
    for r in P["cells"]:
        (r.get("eval") or {}).pop("tasks", None)
    empty = Path("/nonexistent-tasks-dir")
    assert rep.tasks_section(empty, P) == []  # nothing scored, no section
    ok = next(r for r in P["cells"] if r.get("status") == "ok" and r["cell"]["method"] == "sparsegpt")
    ok["eval"]["tasks"] = {"piqa": {"metrics": {"acc": 0.5789, "acc_norm": 0.5582},
                                    "stderr": {"acc": 0.0115, "acc_norm": 0.0116}, "n": 1838, "seconds": 378.0}}
    text = "\n".join(rep.tasks_section(empty, P))
    rows = [ln for ln in text.splitlines() if ln.startswith("| sparsegpt |")]
    assert len(rows) == 1 and "57.89% ± 1.15" in rows[0] and "55.82% ± 1.16" in rows[0]
    assert f"{ok['eval']['perplexity']:.2f}" in rows[0] and "| – | – |" in rows[0]  # no LAMBADA scored
    # the dense row comes from benchmarks/tasks.py's full-set scores of the same model
    d = Path(pytest.importorskip("tempfile").mkdtemp())
    dense = {"model": P["protocol"]["protocol"]["model"], "limit": None,
             "tasks": {"piqa": {"metrics": {"acc": 0.6431, "acc_norm": 0.6431}, "stderr": {"acc": 0.0112, "acc_norm": 0.0112}}}}
    (d / "dense.json").write_text(json.dumps(dense))
    rows = [ln for ln in rep.tasks_section(d, P) if ln.startswith("| dense | – | dense |")]
    assert len(rows) == 1 and "64.31% ± 1.12" in rows[0]
    (d / "dense.json").write_text(json.dumps({**dense, "model": "another-model"}))
    assert not [ln for ln in rep.tasks_section(d, P) if ln.startswith("| dense | – | dense |")]


@pytest.mark.skipif(not (ROUTINE / "protocol.json").is_file(), reason="no routine-protocol results here")
def test_report_puts_a_tasks_py_result_in_the_row_of_the_cell_it_names(tmp_path):
    """A folder pruned again for scoring (``tasks.py --cell KEY``) fills that cell's row with its own
    perplexity; the cells nobody scored are listed; a --limit run and an unnamed folder are not rows."""
    rep = _report()
    P = rep.load_protocol(ROUTINE)
    P = {**P, "cells": copy.deepcopy(P["cells"]), "dense": copy.deepcopy(P["dense"])}
    for r in P["cells"]:
        (r.get("eval") or {}).pop("tasks", None)
    ok = [r for r in P["cells"] if r.get("status") == "ok"]
    a, b = ok[0], ok[1]
    t = lambda acc: {"piqa": {"metrics": {"acc": acc, "acc_norm": acc}, "stderr": {"acc": 0.01, "acc_norm": 0.01},
                              "seconds": 5.0}}  # noqa: E731
    (tmp_path / "x.json").write_text(json.dumps({"model": "DIR", "limit": None, "cell": a["key"], "wikitext2_ppl": 12.345,
                                                 "tasks": t(0.6111), "note": "pruned again"}))
    (tmp_path / "y.json").write_text(json.dumps({"model": "DIR2", "limit": 10, "cell": b["key"], "tasks": t(0.7)}))
    (tmp_path / "z.json").write_text(json.dumps({"model": ".bench/recovery/q-recovered", "limit": None, "tasks": t(0.6222)}))
    text = "\n".join(rep.tasks_section(tmp_path, P))
    row = [ln for ln in text.splitlines() if "tasks.py `x`" in ln]
    assert len(row) == 1 and row[0].startswith(f"| {a['cell']['method']} |") and "| 12.35 |" in row[0]
    assert "61.11% ± 1.00" in row[0] and "`x`: pruned again" in text
    # PIQA alone: a row, but counted apart from the cells scored on both tasks
    assert f"Routine-protocol rows (0 of {len(ok)} cells scored on both tasks, 1 on one" in text
    assert f"Scored on one task so far (1): {rep._cell_label(a['cell'])} (no LAMBADA yet)." in text
    missing = text.split(f"Not scored yet ({len(ok) - 1}): ")[1].split(". The full")[0].split("; ")
    assert rep._cell_label(b["cell"]) in missing and rep._cell_label(a["cell"]) not in missing
    assert "70.00%" not in text  # the --limit run
    assert "| z (`.bench/recovery/q-recovered`) | – | – | 62.22% ± 1.00 |" in text
    both = {**t(0.6111), "lambada": {"metrics": {"acc": 0.1, "perplexity": 500.0}, "stderr": {"acc": 0.004}}}
    (tmp_path / "x.json").write_text(json.dumps({"model": "DIR", "limit": None, "cell": a["key"], "tasks": both}))
    text = "\n".join(rep.tasks_section(tmp_path, P))
    assert f"Routine-protocol rows (1 of {len(ok)} cells scored on both tasks;" in text
    assert "Scored on one task so far" not in text


def test_recovery_section_takes_the_gap_from_the_folder_actually_recovered(tmp_path):
    rep = _report()
    base = {"cell": "sparsegpt-2of4", "dense": 20.0, "config": {"adapter": "full", "lr": 3e-4, "tokens": 1024},
            "trained_tokens": 1024, "train_seconds": 10.0, "recovered": {"perplexity": 40.0}}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps({**base, "pruned": 80.0}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "pruned": 90.0, "pruned_harness": 95.0}))
    text = "\n".join(rep.recovery_section(tmp_path))
    assert "| 80.00 | 40.00 |" in text and "| 90.00 † | 40.00 |" in text
    assert "sparsegpt-2of4 90.00 (harness 95.00)" in text
    assert "| 50% |" in text and "| 54% |" in text  # log(80/40) / log(80/20); log(90/40) / log(90/20)
    assert "sparsegpt-2of4 53.9% (40.00): met" in text  # the better of the two rows


def test_recovery_section_shows_an_unfinished_run_without_a_gap(tmp_path):
    """A run stopped before its final evaluation has only curve points (fewer windows): the row
    shows the last one, marked, and neither a gap nor a 'best' comes from it."""
    rep = _report()
    run = {"cell": "flap-20", "dense": 20.0, "pruned": 40.0, "curve_windows": 5,
           "config": {"adapter": "full", "lr": 1e-4, "tokens": 4096, "distill": 1.0},
           "curve": [{"tokens": 0, "perplexity": 50.0}, {"tokens": 2048, "perplexity": 21.0}]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(run))
    text = "\n".join(rep.recovery_section(tmp_path))
    assert "not finished (21.00 on the curve's 5 windows) §" in text and "§ stopped before" in text
    assert "Best per cell" not in text and "| – | ≥ 50% |" in text


def test_recovery_section_shows_piqa_of_the_pruned_and_recovered_folders(tmp_path):
    """The PIQA column pairs a run (``<cell><tag>.json``) with ``benchmarks/tasks.py``'s scores of the
    folders it started from and saved (``<cell>-pruned``, ``<cell><tag>-recovered``), by folder name."""
    rep = _report()
    (tmp_path / "recovery").mkdir()
    (tmp_path / "tasks").mkdir()
    run = {"cell": "flap-20", "dense": 20.0, "pruned": 40.0, "config": {"adapter": "full", "lr": 1e-4, "tokens": 1024},
           "trained_tokens": 1024, "train_seconds": 10.0, "recovered": {"perplexity": 30.0}}  # fmt: skip
    for stem in ("flap-20-x", "flap-20-y"):
        (tmp_path / "recovery" / f"{stem}.json").write_text(json.dumps(run))

    def scored(name, folder, acc, limit=None):
        t = {"piqa": {"metrics": {"acc": acc, "acc_norm": acc}, "stderr": {"acc": 0.01, "acc_norm": 0.01}}}
        (tmp_path / "tasks" / f"{name}.json").write_text(json.dumps({"model": folder, "limit": limit, "tasks": t}))

    scored("a", ".bench/recovery/flap-20-pruned", 0.6192)
    scored("b", ".bench/recovery/flap-20-x-recovered", 0.6246)
    scored("c", ".bench/recovery/flap-20-y-recovered", 0.7, limit=10)  # a --limit run is not a full-set score
    rows = [ln for ln in rep.recovery_section(tmp_path / "recovery") if ln.startswith("| flap-20 |")]
    assert len(rows) == 2
    assert "| 61.92% → 62.46% |" in rows[0] and "→" not in rows[1]


def test_bench_tasks_keeps_the_other_tasks_of_the_same_model(tiny_llama_dir, tmp_path):
    """Scoring PIQA now and LAMBADA later leaves one file with both; another model starts afresh."""
    spec = importlib.util.spec_from_file_location("bench_tasks", REPO / "benchmarks" / "tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.OUT = tmp_path / "out"
    piqa = _piqa(tmp_path / "piqa.jsonl")
    lam = tmp_path / "lambada.jsonl"
    lam.write_text("".join(json.dumps({"text": " ".join(random.Random(i).choices(WORDS, k=12))}) + "\n" for i in range(6)))
    run = lambda model, task: mod.main(["--model", str(model), "--tasks", task, "--name", "m"])  # noqa: E731
    assert mod.main(["--model", str(tiny_llama_dir), "--tasks", f"piqa:{piqa}", "--name", "m",
                     "--cell", "prunekit__wanda__2of4", "--wikitext2-ppl", "187.3"]) == 0
    assert run(tiny_llama_dir, f"lambada:{lam}") == 0
    got = json.loads((mod.OUT / "m.json").read_text())
    assert set(got["tasks"]) == {"piqa", "lambada"} and got["tasks"]["piqa"]["n"] == 10
    assert (got["cell"], got["wikitext2_ppl"]) == ("prunekit__wanda__2of4", 187.3)  # kept by the second run
    other = tmp_path / "other"
    other.symlink_to(tiny_llama_dir, target_is_directory=True)
    assert run(other, f"lambada:{lam}") == 0
    fresh = json.loads((mod.OUT / "m.json").read_text())
    assert set(fresh["tasks"]) == {"lambada"} and "cell" not in fresh


@pytest.mark.skipif(not (ROUTINE / "protocol.json").is_file(), reason="no routine-protocol results here")
def test_report_marks_the_rows_timed_on_another_cpu_and_the_cells_whose_ppl_moved():
    """Sessions land on different CPU models: a row pruned on a CPU other than most rows' gets the
    ⁴ mark and the footnote names both CPUs; a re-pruned cell whose perplexity moved is listed with
    its earlier figure; with one CPU everywhere and nothing moved there is neither."""
    rep = _report()
    P = rep.load_protocol(ROUTINE)
    P = {**P, "cells": copy.deepcopy(P["cells"])}
    for r in P["cells"]:
        r["machine_cpu"] = "CPU A"
        r.pop("previous", None)
    lines = rep.section(P, None)
    assert not [ln for ln in lines if "⁴" in ln or ln.startswith("Re-pruned")]
    ok = next(r for r in P["cells"] if r.get("status") == "ok" and r["cell"]["method"] == "wanda")
    ok["machine_cpu"] = "CPU B"
    ppl = ok["eval"]["perplexity"]
    ok["previous"] = {"perplexity": ppl * 0.9, "finished_at": "2026-01-02 03:04:05", "machine_cpu": "CPU A"}
    lines = rep.section(P, None)
    marked = [ln for ln in lines if ln.startswith("|") and "⁴" in ln]
    assert len(marked) == 1 and f"{ppl:.2f}" in marked[0]
    note = [ln for ln in lines if ln.startswith("⁴ ")]
    assert len(note) == 1 and "pruned and timed on CPU B; unmarked rows on CPU A" in note[0]
    moved = [ln for ln in lines if ln.startswith("Re-pruned")]
    assert len(moved) == 1 and f"{rep._cell_label(ok['cell'])} {ppl * 0.9:.2f} (2026-01-02, CPU A) → {ppl:.2f}" in moved[0]
    ok["previous"]["perplexity"] = ppl  # reproduced: not listed
    assert not [ln for ln in rep.section(P, None) if ln.startswith("Re-pruned")]


def test_not_scored_line_gives_the_scoring_minutes_per_cpu_from_the_records():
    report = _report()
    cell = lambda cpu, la, pi: {"machine_cpu": cpu, "eval": {"tasks": {"lambada": {"seconds": la}, "piqa": {"seconds": pi}}}}  # noqa: E731
    cells = [cell("AMD EPYC", 1200, 480), cell("AMD EPYC", 1440, 420), cell("Intel(R) Xeon(R) Processor", 660, 270),
             {"machine_cpu": "AMD EPYC", "eval": {}}]  # fmt: skip
    text = report._scoring_minutes(cells)
    assert "LAMBADA set took 20–24 min on the AMD EPYC, 11–11 min on the Intel(R) Xeon(R);" in text
    assert "PIQA 7–8 min on the AMD EPYC, 4–4 min on the Intel(R) Xeon(R)" in text
    assert report._scoring_minutes([{"eval": {}}]) == ""


def test_harness_json_write_leaves_another_jobs_temp_file_alone(tmp_path):
    """Two benchmark jobs write the shared protocol.json: each must rename its own temp file."""
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = run  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(run)
    finally:
        sys.modules.pop("bench_run", None)
    path = tmp_path / "protocol.json"
    other = tmp_path / "protocol.json.tmp"  # an in-flight temp of another writer (old fixed name)
    other.write_text("{}")
    run.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert other.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["protocol.json", "protocol.json.tmp"]


def test_report_divides_a_cell_only_by_the_floor_of_its_own_cpu(tmp_path):
    """One floor per CPU model: ``floor-<cpu>.json`` files load keyed by the CPU they record, a
    prunekit wanda/sparsegpt row is divided by its own CPU's floor, and a row pruned on a CPU with
    no floor says so instead of borrowing another CPU's."""
    rep = _report()
    d = tmp_path / "proto"
    d.mkdir()
    fl = {"status": "ok", "floor_s": 100.0, "floor_cpu_s": 100.0, "nsamples": 4, "seqlen": 8, "batch_size": 1,
          "peak_rss_mb": 10.0}  # fmt: skip
    (d / "floor-cpu-a.json").write_text(json.dumps({**fl, "machine_cpu": "CPU A"}))
    (d / "floor-cpu-b.json").write_text(json.dumps({**fl, "floor_s": 400.0, "floor_cpu_s": 400.0, "machine_cpu": "CPU B"}))
    (d / "floor.json").write_text(json.dumps({**fl, "status": "failed"}))
    assert set(rep.load_floors(d)) == {"CPU A", "CPU B"}
    cell = lambda m, cpu: {"status": "ok", "machine_cpu": cpu,  # noqa: E731
                           "cell": {"tool": "prunekit", "method": m, "kind": "unstructured", "pattern": "unstructured",
                                    "sparsity": 0.5},
                           "prune": {"prune_wall_s": 200.0, "prune_cpu_s": 200.0, "peak_rss_mb": 1.0},
                           "eval": {"perplexity": 10.0, "params": 1, "sparsity": 0.5, "size_bytes": 1}}  # fmt: skip
    P = {"dir": d, "protocol": {}, "dense": None, "floors": rep.load_floors(d),
         "cells": [cell("wanda", "CPU A"), cell("sparsegpt", "CPU B"), cell("wanda", "CPU C")]}
    rows = [ln for ln in rep.section(P, None) if ln.startswith("|") and "| prunekit" in ln]
    assert len(rows) == 3
    ends = sorted(ln.rstrip(" |").rsplit("| ", 1)[-1] for ln in rows)
    # wanda on CPU A: 200 / A's 100; sparsegpt on CPU B: 200 / B's 400; wanda on CPU C: none
    assert ends == ["0.50× (CPU 0.50×)", "2.00× (CPU 2.00×)", "no floor on its CPU"]
