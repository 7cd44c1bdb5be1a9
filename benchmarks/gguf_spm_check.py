"""SentencePiece (Llama-2 / Mistral style) tokenizers exported to GGUF, checked in llama.cpp itself.

    python benchmarks/gguf_check.py setup      # llama-cpp-python from its sdist, once
    python benchmarks/gguf_spm_check.py

No Llama-2/Mistral weights exist offline, so the model is a tiny random Llama and the tokenizer a
SentencePiece BPE model with byte fallback trained here on generated text (as tests/test_gguf_spm.py
does). Both exports (scores from tokenizer.model; tokenizer.json only, scores from merge ranks) are
loaded by llama.cpp (llama-cpp-python, `.bench/venvs/llama-cpp/`): its tokenizer must give the Hugging
Face tokenizer's ids on every text, and its f32 logits must match transformers on the same ids.
Writes benchmarks/results/gguf/spm-check.json and benchmarks/results/sections/71-gguf-spm.md.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
VENV_PY = ROOT / ".bench" / "venvs" / "llama-cpp" / "bin" / "python"

WORKER = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.load(open(sys.argv[1]))
out = {}
for name, f in job["files"].items():
    llm = Llama(model_path=f, n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=1,
                type_k=0, type_v=0)
    toks = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in job["texts"]]
    ids = job["ids"]
    llm.reset(); llm.eval(ids)
    lg = np.array(llm.scores[: len(ids)], dtype=np.float64)
    out[name] = {"tokens": toks, "logits": lg.tolist()}
json.dump(out, open(sys.argv[2], "w"))
"""


def main() -> None:
    import numpy as np
    import sentencepiece as spm
    import torch
    from conftest import make_llama
    from test_gguf_spm import _lines, _texts
    from transformers import AutoTokenizer

    from prunekit.export.gguf import export_gguf

    if not VENV_PY.exists():
        raise SystemExit("llama-cpp venv missing: run `python benchmarks/gguf_check.py setup` first")
    tmp = Path(tempfile.mkdtemp(prefix="spmcheck-"))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_lines(0, 3000)), model_writer=buf, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False)  # fmt: skip
    (tmp / "spm").mkdir()
    (tmp / "spm" / "tokenizer.model").write_bytes(buf.getvalue())
    tok = AutoTokenizer.from_pretrained(tmp / "spm", add_bos_token=True)
    texts = _texts()
    torch.manual_seed(0)
    model = make_llama(vocab=400).float().eval()
    files = {}
    for name, keep in (("tokenizer.model", True), ("tokenizer.json only", False)):
        src = tmp / name.replace(" ", "-")
        model.save_pretrained(src)
        tok.save_pretrained(src)
        if not keep:
            (src / "tokenizer.model").unlink(missing_ok=True)
        files[name] = str(tmp / f"{src.name}.gguf")
        export_gguf(src, files[name], outtype="f32")
    hf_ids = [tok(t).input_ids for t in texts]
    ids = tok(" ".join(texts[:6])).input_ids[:200]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    job = tmp / "job.json"
    job.write_text(json.dumps({"files": files, "texts": texts, "ids": ids}))
    res = tmp / "res.json"
    (tmp / "w.py").write_text(WORKER)
    subprocess.run([str(VENV_PY), str(tmp / "w.py"), str(job), str(res)], check=True)
    got = json.loads(res.read_text())
    summary = {}
    for name, r in got.items():
        same = sum(a == b for a, b in zip(r["tokens"], hf_ids))
        lg = np.array(r["logits"])
        err = float((np.abs(lg - ref).max(-1) / np.abs(ref).max(-1)).max())
        bad = [texts[i] for i, (a, b) in enumerate(zip(r["tokens"], hf_ids)) if a != b][:3]
        summary[name] = {"texts": len(texts), "identical_token_ids": same, "logits_max_rel_err": err,
                         "first_mismatches": bad}  # fmt: skip
        print(name, json.dumps(summary[name]))
    out = ROOT / "benchmarks" / "results" / "gguf" / "spm-check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    L = ["### SentencePiece tokenizers in llama.cpp (Llama-2 / Mistral style)", "",
         "No Llama-2 or Mistral weights exist offline: a tiny random Llama with a SentencePiece BPE tokenizer "
         "(byte fallback, 400 pieces, trained here on generated text) is exported to f32 GGUF (`llama` vocabulary) "
         "and loaded by llama.cpp (llama-cpp-python 0.3.36, as above). Token ids: `Llama.tokenize(text, add_bos=True)` "
         f"vs the Hugging Face tokenizer on {len(texts)} texts (spaces, tabs, newlines, unicode, CJK). Logits: "
         "one 200-token sequence, f32 KV cache, max over positions of max|Δ| / max|logit|.", "",
         "```", "python benchmarks/gguf_spm_check.py", "```", "",
         "| export | identical token ids | logits max rel. error |", "|---|---:|---:|"]  # fmt: skip
    for name, s in summary.items():
        L.append(f"| {name} | {s['identical_token_ids']} / {s['texts']} | {s['logits_max_rel_err']:.1e} |")
    sec = ROOT / "benchmarks" / "results" / "sections" / "71-gguf-spm.md"
    sec.write_text("\n".join(L) + "\n")
    print(sec.read_text())


if __name__ == "__main__":
    main()
