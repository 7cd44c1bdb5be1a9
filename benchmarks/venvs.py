"""Isolated virtual environments for the peer tools of the benchmark harness.

Each peer lives in its own venv under ``<repo>/.bench/venvs/<name>/`` because the peers pin
their own dependency versions (llm-compressor pins its own transformers, for one), which would
clash with the project's environment.  The peer runners in ``benchmarks/peers/`` are executed by
the python this module returns; they never import prunekit.

``torch==2.13.0`` is always installed first, on its own, so that no later package pulls a CUDA
build of torch: on this machine that release is a CPU build found on local disk.

Usage from code::

    from benchmarks.venvs import ensure_peer_venv
    python = ensure_peer_venv("llmcompressor")

or from a shell (to build ahead of time)::

    python benchmarks/venvs.py llmcompressor torch-pruning
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENVS_DIR = REPO_ROOT / ".bench" / "venvs"
TORCH_PIN = "torch==2.13.0"
MARKER_NAME = ".prunekit-venv-ready.json"

#: Packages of each peer tool, installed after ``TORCH_PIN``.
PEER_PACKAGES: dict[str, list[str]] = {
    "llmcompressor": ["llmcompressor==0.14.0.1"],
    "torch-pruning": ["torch-pruning==1.6.1", "transformers"],
}


def venv_python(venv_dir: Path) -> Path:
    """Path of the interpreter inside ``venv_dir`` (POSIX or Windows layout)."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def _spec_digest(packages: list[str]) -> str:
    spec = json.dumps({"torch": TORCH_PIN, "packages": list(packages)}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()


def _marker_ok(venv_dir: Path, digest: str) -> bool:
    marker = venv_dir / MARKER_NAME
    if not marker.is_file() or not venv_python(venv_dir).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == digest
    except (OSError, ValueError):
        return False


def _run(cmd: list[str], log, quiet: bool) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    if not quiet:
        print(f"[venvs] $ {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed with exit code {proc.returncode}: {' '.join(cmd)} "
            f"(see {log.name})"
        )


def ensure_venv(name: str, packages: list[str], *, base_python: str | None = None,
                quiet: bool = False) -> Path:
    """Create (once) the venv ``.bench/venvs/<name>/`` with ``packages`` and return its python.

    ``torch==2.13.0`` is installed first, then ``packages`` in one ``pip install``.  A marker
    file recording the requested package list is written last, so a later call with the same
    list returns at once; a call with a different list reinstalls into the same venv.  The pip
    output goes to ``.bench/venvs/<name>.install.log``.  Concurrent callers are serialised with a
    file lock.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad venv name: {name!r}")
    venv_dir = VENVS_DIR / name
    digest = _spec_digest(packages)
    if _marker_ok(venv_dir, digest):
        return venv_python(venv_dir)

    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    lock_path = VENVS_DIR / f"{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marker_ok(venv_dir, digest):  # another process finished it meanwhile
            return venv_python(venv_dir)
        (venv_dir / MARKER_NAME).unlink(missing_ok=True)
        log_path = VENVS_DIR / f"{name}.install.log"
        started = time.time()
        with open(log_path, "a") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} ensure_venv({name!r}, {packages!r})\n")
            py = venv_python(venv_dir)
            if not py.exists():
                _run([base_python or sys.executable, "-m", "venv", str(venv_dir)], log, quiet)
            pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
            _run(pip + [TORCH_PIN], log, quiet)
            if packages:
                # Keep torch pinned while the rest resolves, so nothing swaps it for another build.
                _run(pip + [TORCH_PIN, *packages], log, quiet)
        marker = {
            "digest": digest,
            "torch": TORCH_PIN,
            "packages": list(packages),
            "install_s": round(time.time() - started, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tmp = venv_dir / (MARKER_NAME + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        tmp.replace(venv_dir / MARKER_NAME)
    return venv_python(venv_dir)


def ensure_peer_venv(peer: str, **kwargs) -> Path:
    """``ensure_venv`` for one of the known peers in ``PEER_PACKAGES``."""
    try:
        packages = PEER_PACKAGES[peer]
    except KeyError:
        raise ValueError(f"unknown peer {peer!r}; known: {sorted(PEER_PACKAGES)}") from None
    return ensure_venv(peer, packages, **kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the peer tools' virtual environments.")
    ap.add_argument("peers", nargs="*", default=sorted(PEER_PACKAGES),
                    help=f"peers to build (default: all of {sorted(PEER_PACKAGES)})")
    args = ap.parse_args(argv)
    for peer in args.peers:
        t0 = time.time()
        py = ensure_peer_venv(peer)
        print(f"{peer}: {py} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
