"""llama.cpp check of ``prunekit export --format gguf`` (issue 42): fidelity and speed.

Not CI: it compiles llama.cpp. ``setup`` installs ``llama-cpp-python`` from its PyPI source
distribution (pinned below) into its own venv ``.bench/venvs/llama-cpp/`` (``.bench/`` is
git-ignored), compiling llama.cpp's CPU library once (``-j1``, tools/examples/server off).
Then, for each model, the exported files are loaded by llama.cpp itself and compared with
transformers on the same token ids:

* ``fidelity``: logits of one 128-token WikiText-2 sequence (f32 and f16 files; max over
  positions of max|Δlogit| / max|logit|), and perplexity of the first ``--windows`` WikiText-2
  test windows of ``--seqlen`` tokens (all four types; transformers in float32 on the same ids).
* ``speed``: llama.cpp prefill of 512 tokens and decode of 128 tokens (one token per call, after
  the prefill), dense vs structured files of the same type, same threads, in turns (ABAB...),
  median of ``--reps``; with the FLOP- and weight-byte-proportional speed-ups for reference.

Usage::

    python benchmarks/gguf_check.py setup
    python benchmarks/gguf_check.py prune            # SmolLM2 FLAP/CFSP/ShortGPT 20%, Týr 50%
    python benchmarks/gguf_check.py fidelity --models smollm2-135m,flap-20,cfsp-20,shortgpt-20,tyr-50,qwen2.5-coder-0.5b
    python benchmarks/gguf_check.py speed --models smollm2-135m,flap-20,cfsp-20,shortgpt-20,tyr-50 --outtype q4_0
    python benchmarks/gguf_check.py section          # benchmarks/results/sections/70-gguf.md

The worker half (``worker``) runs inside the llama-cpp venv and imports only llama_cpp + numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".bench" / "venvs" / "llama-cpp"
WORK = REPO / ".bench" / "gguf"
RESULTS = REPO / "benchmarks" / "results" / "gguf"
SECTION = REPO / "benchmarks" / "results" / "sections" / "70-gguf.md"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF")  # fmt: skip
WIKI = Path("/work/shared/data/wikitext-2-raw")
C4 = "/work/shared/data/c4-sample/"
OUTTYPES = ("f32", "f16", "q8_0", "q4_0")

#: short name -> (base model, prunekit prune arguments); any other name is a model spec itself
PRUNED = {
    "flap-20": ("smollm2-135m", ["--method", "flap", "--sparsity", "0.2"]),
    "cfsp-20": ("smollm2-135m", ["--method", "cfsp", "--sparsity", "0.2"]),
    "shortgpt-20": ("smollm2-135m", ["--method", "shortgpt", "--sparsity", "0.2"]),
    "tyr-50": ("smollm2-135m", ["--method", "tyr", "--sparsity", "0.5"]),
    "qwen-flap-20": ("qwen2.5-coder-0.5b", ["--method", "flap", "--sparsity", "0.2"]),
    "qwen-cfsp-20": ("qwen2.5-coder-0.5b", ["--method", "cfsp", "--sparsity", "0.2"]),
}


def model_spec(name: str) -> str:
    if name in PRUNED:
        return str(WORK / "models" / (name if name.startswith("qwen-") else f"smollm2-{name}"))
    return name


# ---------------------------------------------------------------------------------------------
# setup: the llama-cpp venv


def venv_python() -> Path:
    return VENV / "bin" / "python"


def setup(quiet: bool = False) -> dict:
    marker = VENV / ".prunekit-venv-ready.json"
    if marker.is_file() and venv_python().exists():
        m = json.loads(marker.read_text())
        if m.get("package") == LLAMA_CPP_PYTHON:
            return m
    VENV.parent.mkdir(parents=True, exist_ok=True)
    log = VENV.parent / "llama-cpp.install.log"
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "1", "CMAKE_ARGS": CMAKE_ARGS, "OMP_NUM_THREADS": "1"}
    c0 = os.times()
    with open(log, "a") as fh:
        if not venv_python().exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=fh, stderr=subprocess.STDOUT)
        pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run(pip + ["numpy"], check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)
        t1 = time.time()
        subprocess.run(["nice", "-n", "10", *pip, "-v", "--no-binary", "llama-cpp-python", LLAMA_CPP_PYTHON],
                       check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    c1 = os.times()
    m = {"package": LLAMA_CPP_PYTHON, "from": "PyPI sdist (--no-binary)", "cmake_args": CMAKE_ARGS, "jobs": 1,
         "compile_wall_s": round(time.time() - t1, 1),
         "compile_cpu_s": round((c1.children_user - c0.children_user) + (c1.children_system - c0.children_system), 1),
         "created": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    marker.write_text(json.dumps(m, indent=2) + "\n")
    if not quiet:
        print(json.dumps(m))
    return m


# ---------------------------------------------------------------------------------------------
# worker (inside the llama-cpp venv)


def _no_extra_bufts() -> None:
    """llama.cpp's ``--no-repack``: no extra CPU buffer types (AMX / runtime-repacked weights).

    On this machine (a VM whose CPU reports AMX) every quantised file, the shipped SmolLM2 Q4_1
    included, segfaults in the first decode with them on; llama-cpp-python has no argument for it,
    so the default model parameters are patched."""
    import llama_cpp
    import llama_cpp.llama as ll

    orig = llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p

    ll.llama_cpp.llama_model_default_params = params


def worker(job_path: str) -> None:
    import numpy as np
    from llama_cpp import Llama

    job = json.loads(Path(job_path).read_text())
    if not job.get("extra_bufts"):
        _no_extra_bufts()
    out = {}
    if job["kind"] in ("logits", "ppl"):
        n_ctx = max(len(w) for w in job["windows"])
        kv = {"type_k": 0, "type_v": 0} if job.get("kv_f32") else {}  # GGML_TYPE_F32
        llm = Llama(model_path=job["gguf"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                    n_threads=job["threads"], n_threads_batch=job["threads"], verbose=False, **kv)  # fmt: skip
        if job["kind"] == "logits":
            ids = job["windows"][0]
            llm.reset()
            llm.eval(ids)
            np.save(job["out_npy"], np.asarray(llm.scores[: len(ids)], dtype=np.float32))
        else:
            nll, n = 0.0, 0
            for ids in job["windows"]:
                llm.reset()
                llm.eval(ids)
                lg = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
                lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
                tgt = np.asarray(ids[1:])
                nll += float((lse - lg[np.arange(len(tgt)), tgt]).sum())
                n += len(tgt)
            out = {"nll": nll, "tokens": n, "ppl": float(np.exp(nll / n))}
        out["n_vocab"] = llm.n_vocab()
    elif job["kind"] == "speed":
        res = {}
        llms = {}
        for f in job["files"]:
            llms[f] = Llama(model_path=f, n_ctx=job["prefill"] + job["decode"] + 8, n_batch=job["prefill"],
                            n_ubatch=job["prefill"], logits_all=False, n_threads=job["threads"],
                            n_threads_batch=job["threads"], verbose=False)  # fmt: skip
            res[f] = {"prefill_s": [], "decode_s": []}
        ids = job["ids"][: job["prefill"]]
        dec = job["ids"][job["prefill"]: job["prefill"] + job["decode"]]
        for f, llm in llms.items():  # warm-up: page the weights in
            llm.reset()
            llm.eval(ids[:64])
        for _ in range(job["reps"]):
            for f, llm in llms.items():  # in turns
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(ids)
                t1 = time.perf_counter()
                for t in dec:
                    llm.eval([t])
                t2 = time.perf_counter()
                res[f]["prefill_s"].append(t1 - t0)
                res[f]["decode_s"].append(t2 - t1)
        out = res
    Path(job["out_json"]).write_text(json.dumps(out))


def run_worker(job: dict) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    jp = WORK / f"job-{os.getpid()}-{time.time_ns()}.json"
    job = {**job, "out_json": str(jp.with_suffix(".out.json"))}
    jp.write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(job.get("threads", 1))}
    t0 = time.time()
    r = subprocess.run([str(venv_python()), __file__, "worker", str(jp)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp worker failed on {job.get('gguf') or job.get('files')}: {r.stderr[-2000:]}")
    out = json.loads(Path(job["out_json"]).read_text())
    out["_wall_s"] = round(time.time() - t0, 2)
    jp.unlink(missing_ok=True)
    Path(job["out_json"]).unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# the project side (transformers + prunekit)


def wiki_ids(tok, n_tokens: int) -> list[int]:
    """WikiText-2 test, rows joined with '\\n\\n' (the SparseGPT/Wanda protocol), first n tokens."""
    f = next(p for p in (WIKI / "wiki.test.raw", WIKI / "test.txt") if p.is_file()) if WIKI.is_dir() else None
    if f is None:
        cands = sorted(WIKI.rglob("*test*")) if WIKI.exists() else []
        if not cands:
            raise SystemExit(f"no WikiText-2 test file under {WIKI}")
        f = cands[0]
    text = f.read_text(encoding="utf-8")
    if f.suffix == ".parquet":
        raise SystemExit("parquet WikiText-2 not handled")
    ids = tok(text[: n_tokens * 12], add_special_tokens=False)["input_ids"]
    if len(ids) < n_tokens:
        ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids[:n_tokens]


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_ppl(model, windows) -> float:
    import numpy as np
    import torch

    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            lg = model(torch.tensor([ids])).logits[0, :-1].double()
            tgt = torch.tensor(ids[1:])
            nll += float(torch.nn.functional.cross_entropy(lg, tgt, reduction="sum"))
            n += len(tgt)
    return float(np.exp(nll / n))


def export_all(name: str, outtypes, loaded=None) -> tuple[dict, object]:
    from prunekit.export.gguf import export_gguf
    from prunekit.models import load_model

    spec = model_spec(name)
    if loaded is None:
        loaded = load_model(spec)
    files = {}
    (WORK / "files").mkdir(parents=True, exist_ok=True)
    for t in outtypes:
        out = WORK / "files" / f"{name}-{t}.gguf"
        res = export_gguf(spec, out, outtype=t, overwrite=True, loaded=loaded)
        files[t] = res
    return files, loaded


def rel_err(a, b) -> float:
    import numpy as np

    return float((np.abs(a - b).max(-1) / np.abs(b).max(-1)).max())


def cmd_fidelity(args) -> None:
    import numpy as np

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fidelity.json"
    allres = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.models.split(","):
        t0 = time.time()
        files, (model, tok) = export_all(name, OUTTYPES)
        ids = wiki_ids(tok, args.seqlen * args.windows + 1)
        windows = [ids[i * args.seqlen:(i + 1) * args.seqlen] for i in range(args.windows)]
        seq = windows[0][:128]
        ref = hf_logits(model, seq)
        row = {"spec": model_spec(name), "architecture": files["f32"]["architecture"],
               "per_layer": files["f32"]["per_layer"], "parameters": files["f32"]["parameters"],
               "windows": args.windows, "seqlen": args.seqlen, "threads": args.threads,
               "hf_ppl": hf_ppl(model, windows), "types": {}}  # fmt: skip
        for t in OUTTYPES:
            f = files[t]
            cell = {"bytes": f["bytes"], "mlp_padded": len(f["mlp_padded"]), "f16_fallback": len(f["f16_fallback"])}
            if t in ("f32", "f16"):
                for kv_f32, key in ((True, ""), (False, "_kv_f16")):
                    npy = WORK / f"logits-{name}-{t}.npy"
                    run_worker({"kind": "logits", "gguf": str(WORK / "files" / f"{name}-{t}.gguf"), "windows": [seq],
                                "threads": args.threads, "out_npy": str(npy), "kv_f32": kv_f32})  # fmt: skip
                    got = np.load(npy)
                    npy.unlink()
                    cell["logits_max_rel_err" + key] = rel_err(got, ref)
                    cell["argmax_agree" + key] = float((got.argmax(-1) == ref.argmax(-1)).mean())
            pr = run_worker({"kind": "ppl", "gguf": str(WORK / "files" / f"{name}-{t}.gguf"), "windows": windows,
                             "threads": args.threads})  # fmt: skip
            cell["ppl"] = pr["ppl"]
            cell["ppl_rel"] = pr["ppl"] / row["hf_ppl"] - 1
            row["types"][t] = cell
            print(name, t, json.dumps(cell), flush=True)
        row["wall_s"] = round(time.time() - t0, 1)
        allres[name] = row
        path.write_text(json.dumps(allres, indent=2) + "\n")
        del model
        for t in OUTTYPES:
            if t not in args.keep.split(","):
                (WORK / "files" / f"{name}-{t}.gguf").unlink(missing_ok=True)


def _geometry(gguf_path: str) -> dict:
    """Per-token prefill FLOPs and decode weight bytes of a GGUF, from its tensors."""
    from gguf import GGUFReader

    r = GGUFReader(gguf_path)
    arch = r.fields["general.architecture"].contents()
    lin_params, read_bytes, n_layers = 0, 0, r.fields[f"{arch}.block_count"].contents()
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        if t.name == "token_embd.weight":
            if "output.weight" not in names:  # tied: the output matmul reads it whole
                lin_params += int(t.n_elements)
                read_bytes += int(t.n_bytes)
            continue
        if len(t.shape) >= 2:
            lin_params += int(t.n_elements)
        read_bytes += int(t.n_bytes)
    heads = r.fields[f"{arch}.attention.head_count"].contents()
    heads = heads if isinstance(heads, list) else [heads] * n_layers
    hd = r.fields[f"{arch}.attention.key_length"].contents()
    return {"linear_params": lin_params, "weight_bytes": read_bytes, "attn_width": sum(heads) * hd, "layers": n_layers}


def cmd_speed(args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    files = []
    from prunekit.models import load_model

    ids = None
    for name in names:
        f = WORK / "files" / f"{name}-{args.outtype}.gguf"
        if not f.is_file():
            export_all(name, [args.outtype])
        files.append(str(f))
        if ids is None:
            _, tok = load_model("smollm2-135m") if name == "smollm2-135m" else load_model(model_spec(name))
            ids = wiki_ids(tok, args.prefill + args.decode)
    t0 = time.time()
    res = run_worker({"kind": "speed", "files": files, "ids": ids, "prefill": args.prefill, "decode": args.decode,
                      "reps": args.reps, "threads": args.threads})  # fmt: skip
    out = {"outtype": args.outtype, "threads": args.threads, "reps": args.reps, "prefill": args.prefill,
           "decode": args.decode, "wall_s": round(time.time() - t0, 1), "rows": {}}  # fmt: skip
    base = None
    for name, f in zip(names, files):
        g = _geometry(f)
        r = res[f]
        pre = statistics.median(r["prefill_s"])
        dec = statistics.median(r["decode_s"])
        ctx_avg = args.prefill / 2
        flops = 2 * g["linear_params"] + 4 * g["attn_width"] * ctx_avg  # per prefill token
        row = {"file": f, "bytes": os.path.getsize(f), **g, "prefill_flops_per_token": flops,
               "prefill_tok_s": args.prefill / pre, "decode_tok_s": args.decode / dec,
               "prefill_s_all": r["prefill_s"], "decode_s_all": r["decode_s"]}  # fmt: skip
        if base is None:
            base = row
        row["prefill_speedup"] = row["prefill_tok_s"] / base["prefill_tok_s"]
        row["decode_speedup"] = row["decode_tok_s"] / base["decode_tok_s"]
        row["prefill_ideal"] = base["prefill_flops_per_token"] / flops
        row["decode_ideal"] = base["weight_bytes"] / g["weight_bytes"]
        row["prefill_of_ideal"] = (row["prefill_speedup"] - 1) / (row["prefill_ideal"] - 1) if row["prefill_ideal"] > 1.001 else None
        row["decode_of_ideal"] = (row["decode_speedup"] - 1) / (row["decode_ideal"] - 1) if row["decode_ideal"] > 1.001 else None
        row["prefill_ratio_of_ideal"] = row["prefill_speedup"] / row["prefill_ideal"]
        row["decode_ratio_of_ideal"] = row["decode_speedup"] / row["decode_ideal"]
        out["rows"][name] = row
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not k.endswith("_all")}, flush=True)
    family = "qwen-" if names[0].startswith("qwen") else ""
    (RESULTS / f"speed-{family}{args.outtype}.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_prune(args) -> None:
    """The structured SmolLM2 outputs of the speed table (skipped when already there)."""
    for name in args.models.split(","):
        out = Path(model_spec(name))
        if (out / "config.json").is_file():
            continue
        base, pargs = PRUNED[name]
        cmd = [str(REPO / ".venv" / "bin" / "prunekit"), "prune", base, *pargs, "--calib", C4,
               "--nsamples", "8", "--seqlen", "512", "--out", str(out), "--overwrite", "-q", "--json"]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


LABELS = {"smollm2-135m": "SmolLM2-135M dense", "qwen-flap-20": "Qwen2.5-Coder-0.5B FLAP 20% (uniform)",
          "qwen-cfsp-20": "Qwen2.5-Coder-0.5B CFSP 20% (per-block)", "flap-20": "FLAP 20% (uniform)", "cfsp-20": "CFSP 20% (per-block)",
          "shortgpt-20": "ShortGPT 20% (6 of 30 blocks removed)", "tyr-50": "Týr 50% (per-block)",
          "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B dense"}  # fmt: skip


def _mb(n) -> str:
    return f"{n / 1e6:.1f}"


def cmd_section(args) -> None:
    """benchmarks/results/sections/70-gguf.md from the JSON results (hand-written notes kept in NOTES)."""
    fid = json.loads((RESULTS / "fidelity.json").read_text()) if (RESULTS / "fidelity.json").is_file() else {}
    marker = VENV / ".prunekit-venv-ready.json"
    setup_m = json.loads(marker.read_text()) if marker.is_file() else {}
    notes = (RESULTS / "NOTES.md").read_text() if (RESULTS / "NOTES.md").is_file() else ""
    L = ["## GGUF export checked in llama.cpp (issue 42)", ""]
    if setup_m:
        L += [f"llama.cpp: `{setup_m['package']}` built from its PyPI sdist into `.bench/venvs/llama-cpp/` "
              f"(`python benchmarks/gguf_check.py setup`; CPU library only, `-j1`, nice 10): compile "
              f"{setup_m['compile_wall_s'] / 60:.1f} min wall, {setup_m['compile_cpu_s']:.0f} CPU s on the shared 2-core machine.", ""]  # fmt: skip
    if fid:
        any_row = next(iter(fid.values()))
        wins = sorted({r["windows"] for r in fid.values()}, reverse=True)
        nwin = " / ".join(f"{w} ({', '.join(sorted({'Qwen2.5' if k.startswith('qwen') else 'SmolLM2' for k, r in fid.items() if r['windows'] == w}))})" for w in wins) if len(wins) > 1 else str(wins[0])
        L += ["### Fidelity: llama.cpp vs transformers on the same token ids", "",
              f"Logits: one 128-token WikiText-2 test sequence; error = max over positions of max|Δlogit| / max|logit| "
              f"(llama.cpp with an f32 KV cache; its default f16 KV cache in brackets). Perplexity: the first "
              f"{nwin} WikiText-2 test windows of {any_row['seqlen']} tokens (rows joined with blank lines), "
              f"transformers float32 vs llama.cpp (default f16 KV cache), {any_row['threads']} thread. "
              f"Targets: f32 ≤ 1e-3, f16 ≤ 1e-2; q8_0 ppl within 1%, q4_0 within 5%.", "",
              "| model | GGUF arch | f32 logits err | f16 logits err | transformers ppl | f32 ppl | f16 ppl | q8_0 ppl | q4_0 ppl | q4_0 MB |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in fid.items():
            t = r["types"]

            def pp(k):
                return f"{t[k]['ppl']:.2f} ({t[k]['ppl_rel']:+.2%})"

            arch = r["architecture"] + (" per-layer" if r["per_layer"] else "")
            L.append(f"| {LABELS.get(name, name)} | {arch} | {t['f32']['logits_max_rel_err']:.1e} ({t['f32']['logits_max_rel_err_kv_f16']:.1e}) | "
                     f"{t['f16']['logits_max_rel_err']:.1e} ({t['f16']['logits_max_rel_err_kv_f16']:.1e}) | {r['hf_ppl']:.2f} | "
                     f"{pp('f32')} | {pp('f16')} | {pp('q8_0')} | {pp('q4_0')} | {_mb(t['q4_0']['bytes'])} |")  # fmt: skip
        L.append("")
    for sp in sorted(RESULTS.glob("speed-*.json")):
        d = json.loads(sp.read_text())
        fam = "Qwen2.5-Coder-0.5B" if sp.name.startswith("speed-qwen") else "SmolLM2-135M"
        L += [f"### llama.cpp speed, {fam}, {d['outtype']} files", "",
              f"Prefill {d['prefill']} tokens in one batch, then decode {d['decode']} tokens one call each; "
              f"{d['threads']} thread, all files loaded in one process and run in turns, {d['reps']} rounds, median. "
              f"Ideal prefill speed-up: FLOP-proportional (2·matmul weights + attention scores at the mean context); ideal decode "
              f"speed-up: proportional to the weight bytes read per token (every tensor but the embedding rows; the tied "
              f"embedding counts once, as the output matrix). \"of ideal\" = measured speed-up / ideal speed-up (target ≥ 85%).", "",
              "| model | file MB | prefill tok/s | speed-up | ideal | of ideal | decode tok/s | speed-up | ideal | of ideal |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in d["rows"].items():
            L.append(f"| {LABELS.get(name, name)} | {_mb(r['bytes'])} | {r['prefill_tok_s']:.0f} | {r['prefill_speedup']:.2f}x | "
                     f"{r['prefill_ideal']:.2f}x | {r['prefill_ratio_of_ideal']:.0%} | {r['decode_tok_s']:.1f} | "
                     f"{r['decode_speedup']:.2f}x | {r['decode_ideal']:.2f}x | {r['decode_ratio_of_ideal']:.0%} |")  # fmt: skip
        L.append("")
    for tag in ("", "qwen-"):
        sp = RESULTS / f"speed-{tag}q4_0.json"
        if not sp.is_file() or not fid:
            continue
        d = json.loads(sp.read_text())
        L += [f"### The file a local user picks: q4_0, {'Qwen2.5-Coder-0.5B' if tag else 'SmolLM2-135M'}", "",
              "Perplexity as in the fidelity table (llama.cpp on the q4_0 file; transformers float32 on the source "
              "for reference); speed from the q4_0 speed table.", "",
              "| model | q4_0 file MB | llama.cpp q4_0 ppl | transformers ppl | prefill tok/s | decode tok/s |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in d["rows"].items():
            f = fid.get(name)
            if f is None:
                continue
            L.append(f"| {LABELS.get(name, name)} | {_mb(r['bytes'])} | {f['types']['q4_0']['ppl']:.2f} | {f['hf_ppl']:.2f} | "
                     f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |")  # fmt: skip
        L.append("")
    if notes:
        L += [notes.strip(), ""]
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text("\n".join(L))
    print(SECTION)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup")
    w = sub.add_parser("worker")
    w.add_argument("job")
    pr = sub.add_parser("prune")
    pr.add_argument("--models", default="flap-20,cfsp-20,shortgpt-20,tyr-50")
    f = sub.add_parser("fidelity")
    f.add_argument("--models", default="smollm2-135m")
    f.add_argument("--windows", type=int, default=4)
    f.add_argument("--seqlen", type=int, default=512)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--keep", default="q4_0", help="exported types to keep for the speed run")
    s = sub.add_parser("speed")
    s.add_argument("--models", default="smollm2-135m,flap-20,cfsp-20,shortgpt-20,tyr-50")
    s.add_argument("--outtype", default="q4_0")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--prefill", type=int, default=512)
    s.add_argument("--decode", type=int, default=128)
    sub.add_parser("section")
    a = ap.parse_args(argv)
    if a.cmd == "section":
        cmd_section(a)
        return 0
    if a.cmd == "worker":
        worker(a.job)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.cmd == "setup":
        setup()
        return 0
    if not venv_python().exists():
        setup()
    {"prune": cmd_prune, "fidelity": cmd_fidelity, "speed": cmd_speed}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
