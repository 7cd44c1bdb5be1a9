"""Write a Hugging Face folder atomically: a temp folder beside the target, renamed into place.

Without ``overwrite`` an existing non-empty target is refused and never touched. With it, the
old folder is replaced only once the new one is complete.

The temporary folder is named ``.NAME.tmp-prunekit-PID-XXXX`` (``NAME`` the target's name, ``PID``
the writing process), so a folder left by a killed run (SIGKILL, power loss) is recognisable, is
never mistaken for output, and is removed by the next run that writes to the same target.
:class:`OutputSlot` reserves that folder *before* the long work starts (so a bad ``--out`` —
read-only, not a folder, no space — fails in seconds) and fills it at the end. Files get the
permissions ``save_pretrained`` gives (``0666``/``0777`` minus the umask), not ``mkdtemp``'s
owner-only ``0700``. Every operating-system failure becomes one :class:`OutputError` line naming
the path and the reason.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError

log = logging.getLogger(__name__)

TMP_TAG = ".tmp-prunekit-"
SPACE_MARGIN = 1.05  # free space needed: 5% over the estimated output size, plus 16 MB
SPACE_SLACK = 16_000_000


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("prunekit", "torch", "transformers", "safetensors", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def fmt_bytes(n: float) -> str:
    """Decimal units, as printed: 1 MB = 10⁶ bytes, 1 GB = 10⁹ bytes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def os_reason(e: OSError) -> str:
    """``"Permission denied"`` etc.: the OS reason of an error, without Python's decoration."""
    if getattr(e, "strerror", None) and (e.errno is None or e.errno < 0):  # socket.gaierror: errno -2
        return str(e.strerror)
    if e.errno is not None:
        return os.strerror(e.errno)
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_output_dir(out: str | os.PathLike, overwrite: bool = False, protect: list[str] | None = None) -> Path:
    """Validate ``--out`` before any work is done; returns the resolved path (nothing created).

    Refused, whatever ``overwrite`` says: an empty path (an unset ``$OUT`` would otherwise mean the
    current folder), a folder that holds or is inside an input in ``protect``, and replacing the
    current folder, the home folder or a folder above either (``--overwrite`` of ``.`` or ``..``).
    """
    if not str(out).strip():
        raise OutputError("--out is empty (an unset variable?): give the output folder, e.g. --out out/pruned")
    p = Path(out).expanduser().absolute()
    p = p.parent.resolve() / p.name if p.name not in ("", "..") else p.resolve()  # "..": the folder above
    for q in protect or []:
        qp = Path(q).expanduser().resolve()
        if p == qp or qp.is_relative_to(p) or (qp.is_dir() and p.is_relative_to(qp)):
            raise OutputError(f"--out {out} would overwrite the input {q}: choose another folder")
    for anc in [p, *p.parents]:
        if anc.exists():
            if not anc.is_dir():
                where = "is a file" if anc == p else f"is under {anc}, which is a file"
                raise OutputError(f"--out {out} {where}: give a folder path")
            break
    if p.is_dir():
        try:
            nonempty = any(p.iterdir())
        except OSError as e:
            raise OutputError(f"cannot read --out {out}: {os_reason(e)}") from None
        for what, q in (("the current folder", _cwd()), ("your home folder", Path.home())):
            if q is not None and (q.resolve() == p or q.resolve().is_relative_to(p) or not p.name):
                raise OutputError(f"--out {out} is {what} or a folder above it, which an output would replace "
                                  f"(nothing was changed): choose a new folder")  # fmt: skip
        if nonempty and not overwrite:
            raise OutputError(f"--out {out} exists and is not empty: choose a new folder or pass --overwrite")
    return p


def _cwd() -> Path | None:
    try:
        return Path.cwd()
    except OSError:  # the current folder was deleted
        return None


def check_output_file(out: str | os.PathLike, overwrite: bool = False, protect: list[str] | None = None) -> Path:
    """Validate a single-file ``--out`` (a JSON Lines, a GGUF, ...) before any work; returns its path.

    Refused: an empty path, a folder, one of the inputs in ``protect`` (the same file, also through
    a link), and an existing file without ``overwrite``. Write it with :func:`atomic_file`.
    """
    if not str(out).strip():
        raise OutputError("--out is empty (an unset variable?): give the output file, e.g. --out out/spans.jsonl")
    p = Path(out).expanduser().absolute()
    if p.is_dir() or str(out).endswith(os.sep) or p.name in ("", ".", ".."):
        raise OutputError(f"--out {out} is a folder: give a file path")
    for q in protect or []:
        qp = Path(q).expanduser()
        if qp.exists() and p.exists() and os.path.samefile(p, qp) or p.resolve() == qp.resolve():
            raise OutputError(f"--out {out} is the input {q}: choose another file")
        if qp.is_dir() and p.exists() and p.resolve().is_relative_to(qp.resolve()):
            raise OutputError(f"--out {out} would replace a file of the input {q}: choose a new file name")
    for anc in p.parents:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(f"--out {out} is under {anc}, which is a file: give a path in a folder")
            break
    if p.exists() and not overwrite:
        raise OutputError(f"--out {out} exists: choose a new file or pass --overwrite")
    return p


class atomic_file:  # noqa: N801 - used like open()
    """``with atomic_file(path) as fh:`` writes ``.NAME.tmp-prunekit-PID-XXXX`` beside ``path`` and
    renames it into place only when the block ends without an error (else it is removed)."""

    def __init__(self, path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> None:
        self.path, self.mode, self.encoding = Path(path), mode, (None if "b" in mode else encoding)
        self.created: list[Path] = []

    def __enter__(self):
        missing = [a for a in self.path.parents if not a.exists()]
        try:
            for a in reversed(missing):
                a.mkdir()
                self.created.append(a)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}{TMP_TAG}{os.getpid()}-", dir=self.path.parent)
        except OSError as e:
            self._cleanup_dirs()
            raise OutputError(f"cannot write --out {self.path}: {e.filename or self.path.parent}: {os_reason(e)}") from None
        self.fh = os.fdopen(fd, self.mode, encoding=self.encoding)
        return self.fh

    def __exit__(self, et, ev, tb) -> None:
        try:
            self.fh.close()
            if et is None:
                os.chmod(self.tmp, 0o666 & ~_umask())
                os.replace(self.tmp, self.path)
                return
        except OSError as e:
            Path(self.tmp).unlink(missing_ok=True)
            self._cleanup_dirs()
            raise OutputError(f"could not write --out {self.path}: {os_reason(e)}") from None
        Path(self.tmp).unlink(missing_ok=True)
        self._cleanup_dirs()

    def _cleanup_dirs(self) -> None:
        for a in reversed(self.created):
            try:
                a.rmdir()
            except OSError:
                break


def is_prunekit_output(out: str | os.PathLike) -> bool:
    """Whether ``out`` is a folder that a prunekit run wrote (it holds ``prunekit.json``)."""
    p = Path(out).expanduser()
    return bool(str(out).strip()) and p.is_dir() and (p / "prunekit.json").is_file()


def model_source_dirs(model) -> list[str]:
    """The local folder or file a loaded model came from (``name_or_path``), to protect from overwriting."""
    out = []
    for name in (getattr(model, "name_or_path", None), getattr(getattr(model, "config", None), "_name_or_path", None)):
        if isinstance(name, str) and name.strip() and Path(name).expanduser().exists() and name not in out:
            out.append(name)
    return out


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def stale_temp_folders(target: Path) -> list[Path]:
    """Temporary folders beside ``target`` left by runs that no longer exist."""
    parent = target.parent
    if not parent.is_dir():
        return []
    out = []
    for prefix in (f".{target.name}{TMP_TAG}", f".{target.name}.old-prunekit-"):
        for q in parent.glob(prefix + "*"):
            pid = q.name[len(prefix) :].split("-", 1)[0]
            if q.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                out.append(q)
    legacy = f".{target.name}.tmp-"  # prunekit <= 0.1.0: mkdtemp's 8 random characters, no pid
    for q in parent.glob(legacy + "*"):
        rest = q.name[len(legacy) :]
        if q.is_dir() and len(rest) == 8 and not rest.startswith("prunekit"):
            out.append(q)
    return sorted(out)


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def _fix_permissions(root: Path) -> None:
    """What ``save_pretrained`` gives: folders 0777 and files 0666, minus the umask."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def _no_check() -> None:
    return None


class OutputSlot:
    """A reserved output location: validated, temp folder created, free space checked.

    Use as a context manager: on any exception (Ctrl-C and SIGTERM included) the temp folder and
    any parent folders it created are removed, so nothing is left behind.

    Example:
        >>> with OutputSlot("out/m", need_bytes=600e6) as slot:   # fails now, not after pruning
        ...     ...  # load, prune
        ...     slot.commit(lambda tmp: model.save_pretrained(tmp))
    """

    #: Called before and after the folder is written; the CLI raises here when a signal arrived
    #: while a library swallowed its exception (e.g. inside a ``__del__``), so nothing is kept.
    pre_commit: Callable[[], None] = staticmethod(_no_check)

    def __init__(
        self, out: str | os.PathLike, overwrite: bool = False, *, protect: list[str] | None = None,
        need_bytes: float | None = None, notify: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.spec = str(out)
        self.target = check_output_dir(out, overwrite, protect)
        self.overwrite = overwrite
        self.notify = notify or (lambda msg: log.warning("%s", msg))
        self._created: list[Path] = []
        self.tmp: Path | None = None
        self._reserve()
        if need_bytes:
            self.check_space(need_bytes)

    # --- reservation ---------------------------------------------------------------------------
    def _reserve(self) -> None:
        parent = self.target.parent
        missing = [a for a in [parent, *parent.parents] if not a.exists()]
        try:
            for a in reversed(missing):
                a.mkdir()
                self._created.append(a)
            for q in stale_temp_folders(self.target):
                shutil.rmtree(q, ignore_errors=True)
                self.notify(f"removed {q}, a temporary folder left by an interrupted prunekit run")
            self._make_tmp()
        except OutputError:
            raise
        except OSError as e:
            self.discard()
            where = e.filename or parent
            raise OutputError(f"cannot write --out {self.spec}: {where}: {os_reason(e)}") from None

    def _make_tmp(self) -> None:
        """Create the temp folder beside the target and prove it is writable (subclasses: resume)."""
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}{TMP_TAG}{os.getpid()}-", dir=self.target.parent))
        (self.tmp / ".write-probe").write_bytes(b"ok")
        (self.tmp / ".write-probe").unlink()

    def check_space(self, need_bytes: float) -> None:
        """Refuse (one line) when the output file system has less free space than needed."""
        free = shutil.disk_usage(self.target.parent).free
        need = need_bytes * SPACE_MARGIN + SPACE_SLACK
        if free < need:
            self.discard()
            raise OutputError(
                f"not enough free space for --out {self.spec}: the output needs about "
                f"{fmt_bytes(need)}, {self.target.parent} has {fmt_bytes(free)} free"
            )

    # --- completion -------------------------------------------------------------------------------
    def commit(self, write: Callable[[Path], None]) -> Path:
        """Run ``write(tmp)`` then rename the temp folder into place; returns the target."""
        if self.tmp is None:
            raise OutputError(f"--out {self.spec}: this output slot was already used or discarded")
        try:
            type(self).pre_commit()
            write(self.tmp)
            _fix_permissions(self.tmp)
            type(self).pre_commit()
        except (OutputError, ConfigError):
            self.discard()
            raise
        except OSError as e:
            self.discard()
            raise OutputError(f"could not write --out {self.spec}: {e.filename or self.target}: {os_reason(e)}") from None
        except Exception as e:  # e.g. safetensors' SafetensorError on a full disk
            self.discard()
            reason = " ".join(str(e).split()) or type(e).__name__
            if "No space left" in reason or "os error 28" in reason:
                reason = os.strerror(errno.ENOSPC)
            raise OutputError(f"could not write --out {self.spec}: {reason[:300]}") from None
        except BaseException:
            self.discard()
            raise
        try:
            _swap_into_place(self.tmp, self.target, self.overwrite)
        except OutputError:
            self.discard()
            raise
        except OSError as e:
            self.discard()
            raise OutputError(f"could not move the finished output into {self.target}: {os_reason(e)}") from None
        except BaseException:
            self.discard()
            raise
        self.tmp = None
        return self.target

    def discard(self) -> None:
        """Remove the temp folder and the parent folders this slot created (if still empty)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        for a in reversed(self._created):
            try:
                a.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputSlot:
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is not None:
            self.discard()
        elif self.tmp is not None:  # left without commit
            self.discard()


# Extensions whose saved folders need remote code (each a no-op for configs that are not its kind):
# "module:function", called as fn(config, folder). See prunekit.models.loading.FOLDER_LOADERS.
REMOTE_CODE_WRITERS: tuple[str, ...] = (
    "prunekit.structured.per_block:write_remote_code",  # per-block widths
    "prunekit.methods.armor:write_remote_code",  # ARMOR wrappers
    "prunekit.structured.experts:write_remote_code",  # per-layer expert counts
)


def write_hf_folder(model, tokenizer, tmp: Path, meta: dict[str, Any] | None = None,
                    extra_files: dict[str, str] | None = None) -> None:  # fmt: skip
    """Everything an output folder holds: weights, config, remote code if needed, tokenizer, meta."""
    model.save_pretrained(tmp, safe_serialization=True)
    config = getattr(model, "config", None)
    wrote = []
    for target in REMOTE_CODE_WRITERS:  # each writes its trust_remote_code loader where the config needs it
        mod, fn = target.split(":")
        try:
            writer = getattr(importlib.import_module(mod), fn)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue  # an extension not built (yet): nothing of its kind can be in this model
        if writer(config, tmp):
            wrote.append(mod.rsplit(".", 1)[-1])
    if len(wrote) > 1:  # each sets config.json's auto_map to its own class: they cannot share a folder
        raise ConfigError(f"this model needs two kinds of remote code ({' and '.join(wrote)}), which one folder "
                          f"cannot carry: apply only one of them (nothing was written)")  # fmt: skip
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if meta is not None:
        (tmp / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)


def model_bytes(model) -> int:
    """Bytes of the model's tensors as saved (tied weights counted once)."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def save_pretrained_atomic(
    model, tokenizer, out: str | os.PathLike, meta: dict[str, Any] | None = None,
    *, overwrite: bool = False, extra_files: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """Save ``model`` (safetensors) and ``tokenizer`` plus ``prunekit.json`` into ``out``.

    Raises:
        OutputError: ``out`` is not writable, not empty (without ``overwrite``), the folder the model
            was loaded from (or holds it), the current folder or one above it, on a full disk, ...
    """
    with OutputSlot(out, overwrite, protect=model_source_dirs(model), need_bytes=model_bytes(model)) as slot:
        return slot.commit(lambda tmp: write_hf_folder(model, tokenizer, tmp, meta, extra_files))


def _swap_into_place(tmp: Path, target: Path, overwrite: bool = True) -> None:
    """Rename the finished ``tmp`` to ``target``; an old non-empty target is kept aside until then
    and put back if the final rename fails (so a failed overwrite loses nothing)."""
    old = None
    try:
        if target.exists():
            if any(target.iterdir()):
                if not overwrite:  # someone filled it while we worked
                    raise OutputError(f"--out {target} was filled by someone else meanwhile: nothing was replaced")
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-prunekit-{os.getpid()}-", dir=target.parent))
                os.rename(target, old / "x")
            else:
                target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old / "x", target)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
