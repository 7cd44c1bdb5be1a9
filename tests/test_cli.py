import json
import subprocess
import sys

import pytest
import torch

from prunekit.cli.main import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_prune_eval_info_ls(tmp_path, capsys, tiny_llama_dir, calib_txt):
    out = tmp_path / "pruned"
    rc, stdout, err = _run(capsys, "prune", str(tiny_llama_dir), "--method", "sparsegpt", "--pattern", "2:4",
                           "--calib", str(calib_txt), "--nsamples", "4", "--seqlen", "32", "--out", str(out),
                           "--eval", str(calib_txt), "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert abs(res["sparsity"] - 0.5) < 1e-9 and res["perplexity"] > 1
    assert "overall sparsity of targets: 50.00%" in stdout
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["config"]["calib"]["seed"] == 0 and meta["config"]["method"] == "sparsegpt"
    assert meta["versions"]["torch"] and len(meta["report"]["layers"]) == 14

    rc, stdout, _ = _run(capsys, "eval", str(out), "--data", str(calib_txt), "--seqlen", "32", "--max-windows", "3", "--json")
    ev = json.loads(stdout.strip().splitlines()[-1])
    assert rc == 0 and ev["windows"] == 3 and ev["seqlen"] == 32 and ev["tokens"] == 96 and ev["perplexity"] > 1

    rc, stdout, _ = _run(capsys, "info", str(out), "--json")
    info = json.loads(stdout.strip().splitlines()[-1])
    assert rc == 0 and abs(info["block_linear_sparsity"] - 0.5) < 1e-9
    assert any(layer["name"].endswith("down_proj") for layer in info["linears"])

    rc, stdout, _ = _run(capsys, "ls")
    assert rc == 0 and "sparsegpt" in stdout and "wikitext2:PATH" in stdout


def _bad_cases(tmp_path, model_dir, calib_txt):
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("mine")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00not a model" * 100)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    base = ["--calib", str(calib_txt), "--nsamples", "2", "--seqlen", "16"]
    m = str(model_dir)
    return {
        "missing model": ([str(tmp_path / "no-such-model"), "--method", "wanda", *base], "does not exist"),
        "unknown method": ([m, "--method", "wnda", *base], "did you mean 'wanda'"),
        "sparsity 1.0": ([m, "--method", "wanda", "--sparsity", "1.0", *base], "[0, 1)"),
        "sparsity -0.1": ([m, "--method", "wanda", "--sparsity", "-0.1", *base], "[0, 1)"),
        "N:M 3:2": ([m, "--method", "wanda", "--pattern", "3:2", *base], "1 <= N < M"),
        "N:M 0:4": ([m, "--method", "wanda", "--pattern", "0:4", *base], "1 <= N < M"),
        "empty calib": ([m, "--method", "wanda", "--calib", str(empty)], "empty"),
        "short calib": ([m, "--method", "wanda", "--calib", str(short), "--seqlen", "2048"], "only"),
        "corrupt model": ([str(junk), "--method", "wanda", *base], "could not load"),
        "non-model file": ([str(calib_txt), "--method", "wanda", *base], "is not a model"),
        "out non-empty": ([m, "--method", "wanda", *base, "--out", str(nonempty)], "not empty"),
        "out is input": ([m, "--method", "wanda", *base, "--out", m, "--overwrite"], "would overwrite the input"),
    }


def test_bad_inputs_one_line_nonzero_nothing_written(tmp_path, capsys, tiny_llama_dir, calib_txt):
    for label, (args, msg) in _bad_cases(tmp_path, tiny_llama_dir, calib_txt).items():
        before = sorted(p.name for p in tmp_path.iterdir())
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "out")]
        rc, out, err = _run(capsys, "prune", *args)
        assert rc == 2, label
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prunekit: error:") and msg in lines[0], (label, err)
        assert "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before, label  # nothing new, nothing lost
    assert (tmp_path / "nonempty" / "keep.txt").read_text() == "mine"


def test_overwrite_replaces(tmp_path, capsys, tiny_llama_dir, calib_txt):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("x")
    rc, _, err = _run(capsys, "prune", str(tiny_llama_dir), "--method", "magnitude", "--calib", str(calib_txt),
                      "--nsamples", "2", "--seqlen", "16", "--out", str(out), "--overwrite", "-q")  # fmt: skip
    assert rc == 0, err
    assert (out / "config.json").exists() and not (out / "old.txt").exists()


def test_console_script_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "prunekit", "prune", str(tmp_path / "nope"), "--method", "wanda",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_guide_from_the_cli(capsys):
    from prunekit.methods import list_methods

    rc, stdout, err = _run(capsys, "recommend", "--goal", "2:4", "--json")
    assert rc == 0, err
    rec = json.loads(stdout.strip().splitlines()[-1])
    assert rec["method"] in list_methods() and rec["goal"] == "2:4"
    rc, stdout, _ = _run(capsys, "ls", "--guide")
    assert rc == 0 and all(m in stdout for m in list_methods()) and "speed" in stdout
    rc, _, err = _run(capsys, "recommend", "--goal", "sped")
    assert rc == 2 and err.count("\n") == 1 and "speed" in err


def test_eval_tasks_and_prune_eval_tasks(tmp_path, capsys, tiny_llama_dir, calib_txt):
    piqa = tmp_path / "piqa.jsonl"
    rows = [{"goal": f"How do I open jar {i}?", "sol1": "Twist the lid.", "sol2": "Paint the jar.", "label": i % 2}
            for i in range(4)]  # fmt: skip
    piqa.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rc, stdout, err = _run(capsys, "eval", str(tiny_llama_dir), "--tasks", f"piqa:{piqa}", "--json", "-q")
    assert rc == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert "perplexity" not in res and res["tasks"]["piqa"]["n"] == 4
    assert 0 <= res["tasks"]["piqa"]["metrics"]["acc"] <= 1
    out = tmp_path / "o"
    rc, stdout, err = _run(capsys, "prune", str(tiny_llama_dir), "-m", "wanda", "--calib", str(calib_txt),
                           "--nsamples", "2", "--seqlen", "16", "--eval-tasks", f"piqa:{piqa}", "--eval-limit", "2",
                           "--out", str(out), "-q", "--json")  # fmt: skip
    assert rc == 0, err
    t = json.loads(stdout.strip().splitlines()[-1])["tasks"]
    assert t["dense"]["piqa"]["n"] == 2 and t["pruned"]["piqa"]["n"] == 2
    assert json.loads((out / "prunekit.json").read_text())["tasks"]["dense"]["piqa"]["n"] == 2
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = _run(capsys, "prune", str(tiny_llama_dir), "-m", "wanda", "--calib", str(calib_txt),
                      "--eval-tasks", f"piqa:{tmp_path / 'missing.jsonl'}", "--out", str(tmp_path / "o2"))  # fmt: skip
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_on_a_family_without_adapter_and_ls_families(tmp_path, capsys, tokenizer, calib_txt):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=0, eos_token_id=0)).save_pretrained(src)
    tokenizer.save_pretrained(src)
    out = tmp_path / "o"
    rc, _, err = _run(capsys, "prune", str(src), "-m", "wanda", "--pattern", "2:4", "--calib", str(calib_txt),
                      "--nsamples", "2", "--seqlen", "16", "-q", "--out", str(out))  # fmt: skip
    assert rc == 0, err
    rc, stdout, err = _run(capsys, "info", str(out), "--json")
    assert rc == 0, err
    info = json.loads(stdout.strip().splitlines()[-1])
    assert abs(info["block_linear_sparsity"] - 0.5) < 1e-9 and info["blocks"] == []
    assert any(x["name"].endswith("mlp.c_fc") for x in info["linears"])  # Conv1D counted, as [out, in]
    rc, stdout, _ = _run(capsys, "ls", "--json")
    fams = {f["family"] for f in json.loads(stdout.strip().splitlines()[-1])["families"]}
    assert {"llama", "gpt2", "mixtral", "gemma2"} <= fams


def test_readme_family_table_matches_the_code():
    from pathlib import Path

    from prunekit.models.discovery import family_support

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("<!-- families -->")[1].split("<!-- /families -->")[0]
    rows = {ln.split("|")[1].strip().strip("`"): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in table.strip().splitlines()[2:]}  # fmt: skip
    want = {f["family"]: [f["blocks"], "yes" if f["unstructured"] else "–", "yes" if f["nm"] else "–",
                          "yes" if f["moe"] else "–", ", ".join(f["structured"]) or "–"] for f in family_support()}  # fmt: skip
    assert rows == want


def test_prune_stream_equals_in_memory_and_bad_flags(tmp_path, capsys, tiny_llama_dir, calib_txt):
    from safetensors.torch import load_file

    base = ["prune", str(tiny_llama_dir), "-m", "sparsegpt", "--pattern", "2:4", "--calib", str(calib_txt),
            "--nsamples", "4", "--seqlen", "32", "-q"]  # fmt: skip
    rc, _, err = _run(capsys, *base, "--out", str(tmp_path / "mem"))
    assert rc == 0, err
    rc, _, err = _run(capsys, *base, "--stream", "--out", str(tmp_path / "stream"))
    assert rc == 0, err
    mem = load_file(tmp_path / "mem" / "model.safetensors")
    streamed = {}
    for f in sorted((tmp_path / "stream").glob("*.safetensors")):
        streamed.update(load_file(f))
    assert mem.keys() == streamed.keys() and all(torch_equal(mem[k], streamed[k]) for k in mem)
    before = sorted(p.name for p in tmp_path.iterdir())
    import torch

    cases = [(["--resume"], "add --stream"), (["--stream", "--eval", str(calib_txt)], "does not evaluate"),
             (["--dtype", "int8"], "invalid choice")] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")])
    for extra, msg in cases:
        rc, _, err = _run(capsys, *base, *extra, "--out", str(tmp_path / "bad"))
        assert rc == 2 and err.count("\n") == 1 and msg in err, (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_prune_with_recover_keeps_the_pattern_and_records_recovery(tmp_path, capsys, tiny_llama_dir, calib_txt):
    """`prune --recover`: LLM-Pruner's prune + LoRA pipeline in one run; the 2:4 mask survives."""
    import prunekit as pk
    out = tmp_path / "rec"
    rc, stdout, err = _run(capsys, "prune", str(tiny_llama_dir), "--method", "wanda", "--pattern", "2:4",
                           "--calib", str(calib_txt), "--nsamples", "2", "--seqlen", "32", "--out", str(out),
                           "--recover", "--recover-tokens", "256", "--recover-set", "seqlen=32",
                           "--recover-set", "batch_size=2", "--recover-set", "distill=0.5", "-q", "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["recovery"]["steps"] == 4 and res["recovery"]["mode"] == "masked"
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["recovery"]["tokens"] == 256 and meta["recovery"]["source"] == str(calib_txt)
    assert meta["recovery"]["config"]["distill"] == 0.5  # distilled from the dense model, loaded again
    m, _ = pk.load_model(str(out))
    mlp = m.model.layers[0].mlp.down_proj.weight
    assert ((mlp.reshape(-1, 4) != 0).sum(1) <= 2).all()  # still valid 2:4 after the merged LoRA
    for bad, msg in ((["--recover-set", "lr=2"], "lr"), (["--recover-tokens", "9"], "need --recover"),
                     (["--recover", "--recover-set", "rr=3"], "rr")):  # fmt: skip
        rc, _, err = _run(capsys, "prune", str(tiny_llama_dir), "--method", "wanda", "--out", str(tmp_path / "x"),
                          *(["--recover"] if bad[0] == "--recover-set" and bad[1] == "lr=2" else []), *bad)  # fmt: skip
        assert rc != 0 and msg in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()


def test_llm_pruner_with_recover_is_the_papers_pipeline(tmp_path, capsys, tiny_llama_dir, calib_txt):
    """`prune --method llm-pruner --recover`: structured pruning then plain LoRA, merged into the
    smaller model; the folder is a plain transformers model of the pruned shapes."""
    import prunekit as pk

    common = ["prune", str(tiny_llama_dir), "--method", "llm-pruner", "--sparsity", "0.25", "--calib", str(calib_txt),
              "--nsamples", "2", "--seqlen", "32", "-q", "--json"]  # fmt: skip
    rc, _, err = _run(capsys, *common, "--out", str(tmp_path / "pruned"))
    assert rc == 0, err
    rc, stdout, err = _run(capsys, *common, "--out", str(tmp_path / "rec"), "--recover", "--recover-tokens", "256",
                           "--recover-set", "seqlen=32", "--recover-set", "batch_size=2")  # fmt: skip
    assert rc == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["recovery"]["mode"] == "plain" and res["recovery"]["steps"] == 4
    meta = json.loads((tmp_path / "rec" / "prunekit.json").read_text())
    assert meta["recovery"]["config"]["r"] == 8 and len(meta["recovery"]["losses"]) == 4
    assert not any("no recovery" in n for n in meta["report"]["notes"])
    dense, _ = pk.load_model(str(tiny_llama_dir))
    pruned, _ = pk.load_model(str(tmp_path / "pruned"))
    rec, _ = pk.load_model(str(tmp_path / "rec"))
    assert type(rec).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in rec.named_parameters())
    shapes = {n: p.shape for n, p in rec.named_parameters()}
    assert shapes == {n: p.shape for n, p in pruned.named_parameters()}  # the same prune, recovered
    assert sum(p.numel() for p in rec.parameters()) < sum(p.numel() for p in dense.parameters())
    before = dict(pruned.named_parameters())
    changed = [n for n, p in rec.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(".layers." in n and n.endswith("proj.weight") for n in changed)  # LoRA merged into the blocks


def test_demo_defaults_to_the_best_measured_configuration(tmp_path, capsys, tiny_llama_dir, calib_txt):
    """`make demo`'s default is BENCHMARKS.md's best 50% row that fits 10 min; --method overrides it."""
    common = ["--model", str(tiny_llama_dir), "--calib", str(calib_txt), "--data", str(calib_txt),
              "--nsamples", "2", "--seqlen", "16", "--eval-windows", "1"]  # fmt: skip
    rc, stdout, err = _run(capsys, "demo", *common, "--out", str(tmp_path / "d1"))
    assert rc == 0, err
    assert "sparsegpt refit=pcg + owl allocation" in stdout
    cfg = json.loads((tmp_path / "d1" / "prunekit.json").read_text())["config"]
    assert (cfg["method"], cfg["method_args"], cfg["allocation"]) == ("sparsegpt", {"refit": "pcg"}, "owl")
    rc, stdout, err = _run(capsys, "demo", *common, "--method", "wanda", "--out", str(tmp_path / "d2"))
    assert rc == 0, err
    cfg = json.loads((tmp_path / "d2" / "prunekit.json").read_text())["config"]
    assert (cfg["method"], cfg["method_args"], cfg["allocation"]) == ("wanda", {}, "uniform")
    rc, _, err = _run(capsys, "demo", *common, "--set", "refit=nope", "--out", str(tmp_path / "d3"))
    assert rc == 2 and "refit" in err and len(err.strip().splitlines()) == 1


def test_demo_ends_with_exact_speculative_decoding_of_the_dense_model(tmp_path, capsys, tiny_llama_dir, calib_txt):
    """The demo's last step: plain greedy vs prompt lookup vs RASD with the pruned draft, same ids."""
    from prunekit.cli.main import build_parser
    from prunekit.demo import run_demo

    a = build_parser().parse_args(["demo", "--model", str(tiny_llama_dir), "--calib", str(calib_txt), "--data",
                                   str(calib_txt), "--nsamples", "2", "--seqlen", "16", "--eval-windows", "1",
                                   "--method", "wanda", "--decode-tokens", "12", "--out", str(tmp_path / "d")])
    rows = run_demo(a)["decode"]
    assert [r["method"] for r in rows] == ["plain greedy", "prompt lookup", "RASD: lookup + this demo's pruned draft"]
    assert all(r["identical"] for r in rows) and all(r["new_tokens"] >= 1 for r in rows)
    out = capsys.readouterr().out
    assert "speculative decoding of the dense" in out and out.count(" yes ") == 3
    a.decode_tokens, a.out = 0, str(tmp_path / "e")
    assert "decode" not in run_demo(a)


def test_info_shows_the_armor_wrapper_overhead(tmp_path, capsys, tiny_llama_dir, calib_txt):
    out = tmp_path / "armor"
    rc, _, err = _run(capsys, "prune", str(tiny_llama_dir), "--method", "armor", "--pattern", "2:4", "--calib",
                      str(calib_txt), "--nsamples", "2", "--seqlen", "16", "--set", "block_size=16",
                      "--set", "iters=1", "-q", "--out", str(out))  # fmt: skip
    assert rc == 0, err
    rc, stdout, _ = _run(capsys, "info", str(out))
    assert rc == 0 and "ARMOR: 14 Linears wrapped" in stdout and "block 16" in stdout
    rc, stdout, _ = _run(capsys, "info", str(out), "--json")
    o = json.loads(stdout.strip().splitlines()[-1])["armor"]
    # each wrapped [out, in] Linear adds out·16 + in·16 wrapper parameters (block-diagonal A and B)
    assert o["wrapped_linears"] == 14 and o["wrapper_params"] > 0 and 0 < o["wrapper_over_model"] < 1
    rc, stdout, _ = _run(capsys, "info", str(tiny_llama_dir), "--json")
    assert "armor" not in json.loads(stdout.strip().splitlines()[-1])
