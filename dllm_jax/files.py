"""Reading the small text files a user hands the CLI (task files, workdir JSON): one place
that decides what is accepted and says clearly what is not.

Accepted and normalised: gzip / bzip2 / xz compression (detected from the first bytes, so
`tasks.jsonl.gz` is read directly), a UTF-8 byte-order mark (dropped), and Windows / old Mac
line endings (read as '\\n'). Not accepted, each a `DataError` naming the file, the line and
the fix: UTF-16 / UTF-32 (a byte-order mark or NUL bytes), and bytes that are not UTF-8
(e.g. a latin-1 file).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import lzma
import os

from dllm_jax.errors import DataError

_MAGIC = ((b"\x1f\x8b", "gzip", gzip.decompress), (b"BZh", "bzip2", bz2.decompress), (b"\xfd7zXZ\x00", "xz", lzma.decompress))


def _convert_hint(path: str, source: str) -> str:
    out = path[:-3] if path.endswith(".gz") else path
    return f"convert it to UTF-8, e.g. iconv -f {source} -t UTF-8 {path} > {out}.utf8 (and pass that file)"


def decode_text(data: bytes, path: str) -> str:
    """`data` (the bytes of `path`) as text: UTF-8, BOM dropped, line endings normalised to '\\n'."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DataError(f"{path} is UTF-32 text (it starts with a UTF-32 byte-order mark); {_convert_hint(path, 'UTF-32')}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is UTF-16 text (it starts with a UTF-16 byte-order mark); {_convert_hint(path, 'UTF-16')}")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{path}:{line}: NUL bytes: this looks like UTF-16 or UTF-32 text (or a binary file), not UTF-8; "
                        f"{_convert_hint(path, 'UTF-16')}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8 (the file is in another "
                        f"encoding, e.g. latin-1 / cp1252); {_convert_hint(path, 'LATIN1')}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_bytes(path: str, what: str = "file") -> bytes:
    """The bytes of `path`, decompressed when it is gzip / bzip2 / xz."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path!r} does not exist (or is not a file)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{what} {path!r} cannot be read: {e.strerror or e}") from None
    for magic, name, decompress in _MAGIC:
        if data.startswith(magic):
            try:
                return decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
                raise DataError(f"{path} is a damaged or truncated {name} file ({e}); download or compress it again") from None
    return data


def read_text(path: str, what: str = "file") -> str:
    """A (possibly compressed) UTF-8 text file, normalised as described in the module docstring."""
    return decode_text(read_bytes(path, what), path)


def read_json(path: str, what: str = "file"):
    """One JSON document (e.g. a workdir's config.json); a clear DataError when it is damaged."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: {what} is not valid JSON ({e.msg} at column {e.colno}); "
                        "it may be truncated (disk full, a killed copy): restore or remove it") from None


__all__ = ["decode_text", "read_bytes", "read_text", "read_json"]
