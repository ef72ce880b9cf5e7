"""Reading the small text files a user hands the CLI (task files, workdir JSON): one place
that decides what is accepted and says clearly what is not.

Accepted and normalised: gzip / bzip2 / xz / zstd compression (detected from the first bytes, so
`tasks.jsonl.gz` is read directly; the rule of corpus files, `dllm_jax.data.formats.compression_of`:
another compression or an archive is one error naming it and how to extract it), a UTF-8 byte-order mark (dropped), and Windows / old Mac
line endings (read as '\\n'). Not accepted, each a `DataError` naming the file, the line and
the fix: UTF-16 / UTF-32 (a byte-order mark or NUL bytes), and bytes that are not UTF-8
(e.g. a latin-1 file).
"""

from __future__ import annotations

import json

from dllm_jax import paths
from dllm_jax.errors import DataError


def decode_text(data: bytes, path: str) -> str:
    """`data` (the bytes of `path`) as text: the one decoding rule of the library
    (`dllm_jax.data.formats.decode_text`: UTF-8, BOM dropped, CRLF / CR -> LF; UTF-16/32 and
    bytes that are not UTF-8 are a DataError naming the file, the line and the fix)."""
    from dllm_jax.data.formats import decode_text as _decode

    return _decode(data, path)


def read_bytes(path: str, what: str = "file") -> bytes:
    """The bytes of `path`, decompressed when it is gzip / bzip2 / xz / zstd
    (`dllm_jax.data.formats.decompress_bytes`)."""
    if not paths.isfile(path):
        raise DataError(f"{what} {path!r} does not exist (or is not a file)")
    try:
        data = paths.read_bytes(path)
    except OSError as e:
        raise DataError(f"{what} {path!r} cannot be read: {e.strerror or e}") from None
    from dllm_jax.data.formats import decompress_bytes  # pylint: disable=import-outside-toplevel

    return decompress_bytes(data, path)


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
