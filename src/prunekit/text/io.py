"""Reading text files for segmentation: strict UTF-8, binary files refused, streamed in blocks."""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Iterator

from ..errors import DataError

BLOCK_BYTES = 1 << 16


def check_file(path: str | os.PathLike) -> int:
    """Validate ``path`` in one streaming pass (exists, not binary, valid UTF-8, not blank) and
    return its length in characters. Raises ``DataError`` with one line otherwise."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"segment: {p} does not exist")
    if not p.is_file():
        raise DataError(f"segment: {p} is not a regular file")
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    n_chars, offset, blank = 0, 0, True
    try:
        with open(p, "rb") as f:
            while True:
                raw = f.read(BLOCK_BYTES)
                nul = raw.find(b"\x00")
                if nul >= 0:
                    raise DataError(f"segment: {p} looks like a binary file (NUL byte at byte {offset + nul}); give a UTF-8 text file")
                try:
                    chunk = dec.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    raise DataError(f"segment: {p} is not valid UTF-8 (byte {offset + e.start}); convert it, e.g. `iconv -t utf-8`") from None
                if blank and chunk.strip():
                    blank = False
                n_chars += len(chunk)
                offset += len(raw)
                if not raw:
                    break
    except OSError as e:
        raise DataError(f"segment: cannot read {p}: {e.strerror or e}") from None
    if n_chars == 0:
        raise DataError(f"segment: {p} is empty")
    if blank:
        raise DataError(f"segment: {p} holds only whitespace")
    return n_chars


def iter_blocks(path: str | os.PathLike, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """The file's text in blocks (a character never split across blocks). Line endings are kept
    as they are (no newline translation), so offsets index the file's exact text."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    with open(path, "rb") as f:
        while True:
            raw = f.read(block_bytes)
            chunk = dec.decode(raw, final=not raw)
            if chunk:
                yield chunk
            if not raw:
                return


def read_text(path: str | os.PathLike) -> str:
    check_file(path)
    return "".join(iter_blocks(path))
