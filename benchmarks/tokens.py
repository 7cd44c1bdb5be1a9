"""Token pruning inside the model (issue 41): LLaVA visual-token prefill speed and FTP routing quality.

    .venv/bin/python benchmarks/tokens.py llava --keeps 1,0.5,0.25,0.1 --repeats 2      # random-init LLaVA, prefill wall
    .venv/bin/python benchmarks/tokens.py llava --methods vflowopt,coarse-to-fine --tag=-vlm2   # the newer methods
    .venv/bin/python benchmarks/tokens.py ftp --model smollm2-135m --sparsity 0.3 \\
        --nsamples 16 --seqlen 512 --windows 4                                           # FTP vs block skip vs random
    .venv/bin/python benchmarks/tokens.py vlm --fit-per-class 300 --eval-per-class 50      # constructed VLM, accuracy vs keep
    .venv/bin/python benchmarks/tokens.py report                                         # the BENCHMARKS.md section

LLaVA protocol: **no VLM weights exist offline**, so the model is a random-init
``LlavaForConditionalGeneration`` at realistic shapes (speed needs no trained weights): a
CLIP-ViT-L/14-336-shaped tower (24 layers, 1024 wide, 576 patches, feature layer -2), a 2-layer
projector, and a Qwen2-0.5B-shaped LM (24 layers, 896 wide, 14/2 heads, 4864 MLP, 151,936 vocab,
tied embeddings), float32, batch 1, one torch thread. Prompt: a LLaVA-1.5 chat prompt with the
576 image placeholders and a question. ``LM prefill`` = the forward with the image features
precomputed (``mm_encoder_outputs``, the vision tower untimed); ``end-to-end`` adds the vision
tower. Median of the repeats; FastV at K=2, Recoverable Compression at K=0 (before the LM),
VFlowOpt (simplified: one stage, recycling ρ=0.25) at K=2, LRS-VQA coarse-to-fine (4×4-token
regions of the 24×24 grid, text-guided) at K=0.

FTP protocol: routers trained on C4 calibration windows (``c4-sample`` head1000, never the test
split), then WikiText-2 test perplexity on the first ``--windows`` non-overlapping windows of
``--seqlen`` tokens of ``wiki.test.raw`` (the raw file, the model's tokenizer), every method in one
run at equal computed token-blocks: dense, FTP (uniform schedule), random routing (same schedule),
ShortGPT-style whole-block skipping (lowest Block Influence on the same calibration windows) and
LazyLLM-style attention dropping (``attn-drop``, K=2). Counters beside wall: token-blocks computed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "tokens"
SECTION = HERE / "results" / "sections" / "58-tokens.md"
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))


def _threads():
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------- LLaVA
def build_llava(text_layers: int = 24, vision_layers: int = 24, seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers,
                          num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
    tc = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=text_layers,
                     num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                     tie_word_embeddings=True)  # fmt: skip
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=151646, image_seq_length=576,
                      tie_word_embeddings=True)  # fmt: skip
    with torch.device("meta"):
        m = LlavaForConditionalGeneration(cfg)
    m = m.to_empty(device="cpu")
    with torch.no_grad():  # a cheap random init: speed does not depend on the values
        g = torch.Generator().manual_seed(seed)
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name or "layernorm" in name or "layer_norm" in name else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for name, b in m.named_buffers():
            if "position_ids" in name:
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
        m.model.language_model.rotary_emb.__init__(m.config.text_config)
    return m.eval()


def llava_prompt(n_image: int = 576, image_token: int = 151646, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    before = torch.randint(0, 150000, (1, 35), generator=g)  # system prompt + "USER: "
    after = torch.randint(0, 150000, (1, 14), generator=g)  # "\nWhat is in this picture? ASSISTANT:"
    ids = torch.cat([before, torch.full((1, n_image), image_token), after], 1)
    px = torch.randn(1, 3, 336, 336, generator=g)
    return ids, px


def cmd_llava(a) -> None:
    import torch

    import prunekit as pk

    _threads()
    t0, c0 = time.perf_counter(), _cpu()
    m = build_llava(a.text_layers, a.vision_layers)
    ids, px = llava_prompt()
    build_s = time.perf_counter() - t0
    rows = []
    keeps = [float(x) for x in a.keeps.split(",")]

    def timed(method: str | None, keep: float):
        lm, e2e, stats = [], [], None
        for _ in range(a.repeats):
            with torch.no_grad():
                if method:
                    pk.tokens.patch(m, method=method, keep=keep)
                try:
                    t = time.perf_counter()
                    feats = m.model.get_image_features(pixel_values=px, vision_feature_layer=m.config.vision_feature_layer,
                                                       vision_feature_select_strategy=m.config.vision_feature_select_strategy,
                                                       return_dict=True)  # fmt: skip
                    tv = time.perf_counter() - t
                    t = time.perf_counter()
                    out = m(input_ids=ids, mm_encoder_outputs={"image": feats}, use_cache=True, logits_to_keep=1)
                    tl = time.perf_counter() - t
                finally:
                    s = pk.tokens.unpatch(m) if method else None
            lm.append(tl)
            e2e.append(tl + tv)
            stats = s
        return statistics.median(lm), statistics.median(e2e), stats, out.logits

    ref_lm, ref_e2e, _, ref_logits = timed(None, 1.0)
    rows.append({"method": "all tokens", "keep": 1.0, "layer": None, "lm_s": ref_lm, "e2e_s": ref_e2e,
                 "lm_tokens": int(ids.shape[1]), "token_blocks": int(ids.shape[1]) * a.text_layers})  # fmt: skip
    print(f"all tokens: LM {ref_lm:.2f}s end-to-end {ref_e2e:.2f}s", flush=True)
    identical = {}
    for method in a.methods.split(","):
        for keep in keeps:
            lm_s, e2e_s, st, logits = timed(method, keep)
            if keep == 1.0:
                identical[method] = bool(torch.equal(logits, ref_logits))
                continue
            rows.append({"method": method, "keep": keep, "layer": st["layer"], "lm_s": lm_s, "e2e_s": e2e_s,
                         "kept_image_tokens": 576 - st["removed"][st["layer"]],
                         "lm_tokens": int(ids.shape[1]) - st["removed"][st["layer"]], "token_blocks": st["token_blocks"],
                         "token_blocks_dense": st["token_blocks_dense"]})  # fmt: skip
            print(f"{method} keep {keep}: LM {lm_s:.2f}s ({ref_lm / lm_s:.2f}x) e2e {e2e_s:.2f}s ({ref_e2e / e2e_s:.2f}x)", flush=True)
    res = {"protocol": "random-init LLaVA (CLIP-ViT-L/14-336-shaped tower, Qwen2-0.5B-shaped LM), fp32, batch 1, 1 thread",
           "no_vlm_weights": True, "prompt_tokens": int(ids.shape[1]), "image_tokens": 576, "repeats": a.repeats,
           "text_layers": a.text_layers, "vision_layers": a.vision_layers, "keep_1_identical": identical,
           "build_seconds": build_s, "wall_seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0,
           "rows": rows, "command": "benchmarks/tokens.py " + " ".join(sys.argv[1:])}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"llava{a.tag}.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {OUT / f'llava{a.tag}.json'}: wall {res['wall_seconds']:.0f}s cpu {res['cpu_seconds']:.0f}s")


# ---------------------------------------------------------------- FTP
def cmd_ftp(a) -> None:
    import torch

    import prunekit as pk
    from prunekit.tokens import ftp

    _threads()
    t0, c0 = time.perf_counter(), _cpu()
    model, tok = pk.load_model(a.model)
    L = model.config.num_hidden_layers
    calib = pk.calibration_windows(str(DATA / "c4-sample" / "c4-train.00000-of-01024.head1000.jsonl"), tok,
                                   nsamples=a.nsamples, seqlen=a.seqlen, seed=0)  # fmt: skip
    test = pk.eval_token_ids(f"wikitext2:{DATA / 'wikitext-2-raw' / 'wiki.test.raw'}", tok)
    tt, ct = time.perf_counter(), _cpu()
    routers = ftp.train(model, calib, ftp.FTPConfig(sparsity=a.sparsity, steps=a.steps), progress=True)
    train_s, train_cpu = time.perf_counter() - tt, _cpu() - ct
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"ftp-routers{a.tag}.safetensors", "wb") as fh:
        routers.save(fh)
    n_skip = round(a.sparsity * L)
    tb = time.perf_counter()
    blocks = ftp.shortgpt_blocks(model, calib[: min(8, a.nsamples)], n_skip)
    bi_s = time.perf_counter() - tb
    keep_lazy = (L * (1 - a.sparsity) - a.lazy_layer) / (L - a.lazy_layer)
    methods = [("dense", None, {}), ("ftp", "ftp", {"routers": routers}),
               ("random routing", "random-route", {"sparsity": a.sparsity}),
               ("ftp, kv=keep", "ftp", {"routers": routers, "kv": "keep"}),
               ("random routing, kv=keep", "random-route", {"sparsity": a.sparsity, "kv": "keep"}),
               (f"ShortGPT blocks ({n_skip} skipped)", "block-skip", {"blocks": blocks}),
               (f"attn-drop (LazyLLM-style, K={a.lazy_layer})", "attn-drop", {"keep": keep_lazy, "layer": a.lazy_layer})]  # fmt: skip
    rows = []
    for label, method, kw in methods:
        if method:
            pk.tokens.patch(model, method=method, **kw)
        c1 = _cpu()
        r = pk.perplexity(model, test, seqlen=a.seqlen, max_windows=a.windows)
        cpu = _cpu() - c1
        st = pk.tokens.unpatch(model) if method else {"token_blocks": r["tokens"] * L, "token_blocks_dense": r["tokens"] * L}
        rows.append({"method": label, "perplexity": r["perplexity"], "seconds": r["seconds"], "cpu_seconds": cpu,
                     "token_blocks": st["token_blocks"], "token_blocks_dense": st["token_blocks_dense"],
                     "token_block_sparsity": 1 - st["token_blocks"] / st["token_blocks_dense"]})  # fmt: skip
        print(f"{label}: ppl {r['perplexity']:.2f} ({r['seconds']:.1f}s) token-blocks {st['token_blocks']}/{st['token_blocks_dense']}", flush=True)
    res = {"model": a.model, "sparsity": a.sparsity, "nsamples": a.nsamples, "seqlen": a.seqlen, "windows": a.windows,
           "steps": a.steps, "schedule": routers.schedule, "shortgpt_blocks": blocks, "lazy_keep": keep_lazy,
           "train_seconds": train_s, "train_cpu_seconds": train_cpu, "block_influence_seconds": bi_s,
           "wall_seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0, "rows": rows,
           "command": "benchmarks/tokens.py " + " ".join(sys.argv[1:])}  # fmt: skip
    (OUT / f"ftp{a.tag}.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {OUT / f'ftp{a.tag}.json'}: wall {res['wall_seconds']:.0f}s cpu {res['cpu_seconds']:.0f}s")


# ---------------------------------------------------------------- constructed VLM (quality)
def cmd_vlm(a) -> None:
    import torch

    import prunekit as pk
    from prunekit.tokens import tinyvlm as V

    _threads()
    t0, c0 = time.perf_counter(), _cpu()
    tar = DATA / "cifar10-test" / "cifar10-test-jpeg.tar"
    lm, tok = pk.load_model(a.model)
    enc, pre = V.load_efficientnet_lite0()
    fit_set = V.read_cifar10_tar(tar, "fit", per_class=a.fit_per_class)
    eval_set = V.read_cifar10_tar(tar, "eval", per_class=a.eval_per_class)
    t = time.perf_counter()
    f_fit = V.encode(enc, pre, [b for b, _ in fit_set], progress=True)
    f_eval = V.encode(enc, pre, [b for b, _ in eval_set], progress=True)
    encode_s = time.perf_counter() - t
    y_fit = torch.tensor([y for _, y in fit_set])
    y_eval = torch.tensor([y for _, y in eval_set])
    vlm = V.build_vlm(lm, tok, V.TowerConfig(layers=a.tower_layers), seed=a.seed)
    c1 = _cpu()
    fitted = V.fit(vlm, tok, f_fit, y_fit, epochs=a.epochs, batch=a.batch, lr=a.lr, loss=a.loss, seed=a.seed, progress=True)
    fit_cpu = _cpu() - c1
    n_img = f_eval.shape[-1] ** 2
    ids, _ = V.prompt(tok, n_img, vlm.config.image_token_id)
    n_layers = vlm.config.text_config.num_hidden_layers
    res = {"protocol": (f"constructed VLM: EfficientNet-Lite0 (ImageNet weights, frozen) 7×7×1280 map → {a.tower_layers}-layer "
                        f"CLIP tower + LLaVA projector (trained) → frozen {a.model}; fit on {len(fit_set)} images of the "
                        f"CIFAR-10 test set (even-numbered files, {a.fit_per_class}/class), evaluated on {len(eval_set)} "
                        f"others (odd-numbered, {a.eval_per_class}/class); verbalised 10-way accuracy"),
           "no_vlm_weights": True, "model": a.model, "prompt_tokens": int(ids.shape[1]), "image_tokens": n_img,
           "fit": {k: v for k, v in fitted.items() if k != "losses"} | {"cpu_seconds": fit_cpu, "epochs": a.epochs,
                   "batch": a.batch, "lr": a.lr, "loss": a.loss, "images": len(fit_set),
                   "loss_curve": fitted["losses"][:: max(1, len(fitted["losses"]) // 20)]},
           "encode_seconds": encode_s, "rows": [], "command": "benchmarks/tokens.py " + " ".join(sys.argv[1:])}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"vlm{a.tag}.json"

    def run(method: str | None, keep: float, **opts):
        if method:
            pk.tokens.patch(vlm, method=method, keep=keep, **opts)
        t, c = time.perf_counter(), _cpu()
        try:
            acc = V.accuracy(vlm, tok, f_eval, y_eval, batch=a.batch)
        finally:
            st = pk.tokens.unpatch(vlm) if method else None
        row = {"method": method or "all tokens", "keep": keep, "accuracy": acc["accuracy"], "n": acc["n"],
               "seconds": time.perf_counter() - t, "cpu_seconds": _cpu() - c, "options": opts}  # fmt: skip
        if st:
            k = st["layer"]
            row |= {"layer": k, "kept_image_tokens": n_img - st["removed"][k] // acc["n"],
                    "token_blocks": st["token_blocks"], "token_blocks_dense": st["token_blocks_dense"]}  # fmt: skip
        else:
            row |= {"layer": None, "kept_image_tokens": n_img, "token_blocks": int(ids.shape[1]) * n_layers * acc["n"],
                    "token_blocks_dense": int(ids.shape[1]) * n_layers * acc["n"]}  # fmt: skip
        res["rows"].append(row)
        res["wall_seconds"], res["cpu_seconds"] = time.perf_counter() - t0, _cpu() - c0
        out.write_text(json.dumps(res, indent=1))
        print(f"{row['method']} keep {keep}: accuracy {row['accuracy']:.3f} ({row['seconds']:.0f}s)", flush=True)
        return acc

    full = run(None, 1.0)
    opts = {"coarse-to-fine": {"region": a.region}}
    for method in a.methods.split(","):
        for keep in [float(x) for x in a.keeps.split(",")]:
            run(method, keep, **opts.get(method, {}))
    print(f"wrote {out}: wall {res['wall_seconds']:.0f}s cpu {res['cpu_seconds']:.0f}s; all tokens {full['accuracy']:.3f}")


# ---------------------------------------------------------------- report
def _table(head: list[str], rows: list[list]) -> list[str]:
    """Markdown rows: method | keep | K, then ``head``; each row starts with its result dict."""
    out = ["| method | keep | K | " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * len(head)]
    for x, *cells in rows:
        k = x["layer"] if x["layer"] is not None else "–"
        out.append(f"| {x['method']} | {x['keep']:.2f} | {k} | " + " | ".join(str(c) for c in cells) + " |")
    return out + [""]


def cmd_report(a) -> None:
    parts = ["## Token pruning inside the model: FastV / Recoverable Compression on LLaVA, FTP routing\n",
             "`prunekit.tokens`: one hook (scorer → selector → recovery) on the decoder layers; every patch counts "
             "the tokens it removed per layer and the token-blocks computed. Tests (tests/test_tokens.py) check "
             "keep=1 bit-identity, the counts, and pruned prefill + decode against a hand-written run of the layers "
             "on the kept rows.\n"]  # fmt: skip
    for f in sorted(OUT.glob("llava*.json")):
        r = json.loads(f.read_text())
        parts.append(f"**Prefill wall-clock, random-init LLaVA — no VLM weights exist offline, so these are speed "
                     f"numbers only, no quality.** {r['protocol']}; {r['prompt_tokens']}-token prompt "
                     f"({r['image_tokens']} image tokens), LM {r['text_layers']} layers, tower {r['vision_layers']} "
                     f"layers; median of {r['repeats']}; keep=1 logits bit-identical to no patch: "
                     f"{r['keep_1_identical']}; run wall {r['wall_seconds']:.0f} s, CPU {r['cpu_seconds']:.0f} s "
                     f"(2 cores shared with other jobs: wall is noisy, token-blocks are not).\n")  # fmt: skip
        parts.append(f"`.venv/bin/python {r['command']}`\n")
        base = r["rows"][0]
        parts += _table(["LM tokens after K", "LM token-blocks", "LM prefill s", "×", "end-to-end s", "×"], [
            [x, x["lm_tokens"], x["token_blocks"], f"{x['lm_s']:.2f}", f"{base['lm_s'] / x['lm_s']:.2f}×",
             f"{x['e2e_s']:.2f}", f"{base['e2e_s'] / x['e2e_s']:.2f}×"] for x in r["rows"]])  # fmt: skip
    for f in sorted(OUT.glob("vlm*.json")):
        r = json.loads(f.read_text())
        fit = r["fit"]
        parts.append(f"**Visual-token pruning on a constructed VLM — no VLM weights exist offline, so this is a VLM "
                     f"built here from real parts, not a released one.** {r['protocol']}. Prompt {r['prompt_tokens']} "
                     f"tokens ({r['image_tokens']} visual). Trained: the tower + projector only "
                     f"({fit['images']} images × {fit['epochs']} epochs, batch {fit['batch']}, AdamW lr {fit['lr']:g}, "
                     f"cross-entropy over the class tokens; loss {fit['loss_first']:.2f} → {fit['loss_last20']:.2f}; "
                     f"{fit['seconds']:.0f} s wall, {fit['cpu_seconds']:.0f} s CPU); encoding the images "
                     f"{r['encode_seconds']:.0f} s; run wall {r['wall_seconds']:.0f} s, CPU {r['cpu_seconds']:.0f} s. "
                     f"Methods at their default layer (FastV/VFlowOpt/random K=2, Recoverable/coarse-to-fine K=0, "
                     f"coarse-to-fine with 2×2-cell regions of the 7×7 map). With {r['rows'][0]['n']} test images one "
                     f"accuracy figure carries about ±{100 * (0.25 / r['rows'][0]['n']) ** 0.5:.1f} points of sampling "
                     f"noise (1 s.e. at 50%).\n")  # fmt: skip
        parts.append(f"`.venv/bin/python {r['command']}`\n")
        base = r["rows"][0]
        parts += _table(["visual tokens kept", "accuracy", "Δ vs all tokens", "LM token-blocks", "eval s"], [
            [x, f"{x['kept_image_tokens']} / {r['image_tokens']}", f"{100 * x['accuracy']:.1f}%",
             f"{100 * (x['accuracy'] - base['accuracy']):+.1f}", f"{x['token_blocks']:,}", f"{x['seconds']:.0f}"]
            for x in r["rows"]])  # fmt: skip
    for f in sorted(OUT.glob("ftp*.json"), key=lambda f: (f.stem != "ftp", f.name)):
        r = json.loads(f.read_text())
        parts.append(f"**FTP token routing vs whole-block skipping at {100 * r['sparsity']:.0f}% token-block "
                     f"sparsity** ({r['model']}; routers: {r['nsamples']} C4 train windows × {r['seqlen']} tokens, "
                     f"{r['steps']} Adam steps per router, {r['train_seconds']:.0f} s wall / {r['train_cpu_seconds']:.0f} s "
                     f"CPU; uniform schedule {r['schedule'][1]:.3f} on blocks 1..L-1, block 0 dense; evaluation: "
                     f"WikiText-2 test, first {r['windows']} windows × {r['seqlen']} tokens of wiki.test.raw; ShortGPT "
                     f"blocks by Block Influence on 8 of the calibration windows: {r['shortgpt_blocks']}; attn-drop keep "
                     f"{r['lazy_keep']:.3f}; run wall {r['wall_seconds']:.0f} s, CPU {r['cpu_seconds']:.0f} s.)\n")  # fmt: skip
        parts.append(f"`.venv/bin/python {r['command']}`\n")
        parts.append("| method | WikiText-2 ppl | token-blocks computed | skipped | eval wall s | eval CPU s | × dense wall |")
        parts.append("|---|---:|---:|---:|---:|---:|---:|")
        d = r["rows"][0]
        for x in r["rows"]:
            parts.append(f"| {x['method']} | {x['perplexity']:.2f} | {x['token_blocks']} / {x['token_blocks_dense']} | "
                         f"{100 * x['token_block_sparsity']:.1f}% | {x['seconds']:.1f} | {x['cpu_seconds']:.1f} | "
                         f"{d['seconds'] / x['seconds']:.2f}× |")  # fmt: skip
        parts.append("")
    notes = OUT / "notes.md"
    if notes.is_file():
        parts.append(notes.read_text())
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {SECTION}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("llava")
    p.add_argument("--keeps", default="1,0.5,0.25,0.1")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--methods", default="fastv,recoverable", help="comma list: fastv,recoverable,vflowopt,coarse-to-fine")
    p.add_argument("--text-layers", type=int, default=24)
    p.add_argument("--vision-layers", type=int, default=24)
    p.add_argument("--tag", default="")
    p.set_defaults(fn=cmd_llava)
    f = sub.add_parser("ftp")
    f.add_argument("--model", default="smollm2-135m")
    f.add_argument("--sparsity", type=float, default=0.3)
    f.add_argument("--nsamples", type=int, default=16)
    f.add_argument("--seqlen", type=int, default=512)
    f.add_argument("--windows", type=int, default=4)
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--lazy-layer", type=int, default=2)
    f.add_argument("--tag", default="")
    f.set_defaults(fn=cmd_ftp)
    v = sub.add_parser("vlm")
    v.add_argument("--model", default="smollm2-135m")
    v.add_argument("--fit-per-class", type=int, default=300)
    v.add_argument("--eval-per-class", type=int, default=50)
    v.add_argument("--epochs", type=int, default=1)
    v.add_argument("--batch", type=int, default=16)
    v.add_argument("--lr", type=float, default=2e-3)
    v.add_argument("--loss", default="labels", choices=("labels", "vocab"))
    v.add_argument("--tower-layers", type=int, default=1)
    v.add_argument("--keeps", default="0.5,0.25,0.1")
    v.add_argument("--methods", default="fastv,recoverable,vflowopt,coarse-to-fine,random")
    v.add_argument("--region", type=int, default=2, help="coarse-to-fine region side on the 7×7 grid")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--tag", default="")
    v.set_defaults(fn=cmd_vlm)
    r = sub.add_parser("report")
    r.set_defaults(fn=cmd_report)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
