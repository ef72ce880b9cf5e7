"""Reading corpus files: decompression by content, UTF-8 decoding with stated normalisation,
and the text of JSONL and Parquet records.

Text (``decode_text``), as the README states:
- a UTF-8 byte-order mark at the start of a file is removed;
- in text files, CRLF and lone CR line endings become LF (JSONL/Parquet text values are
  used exactly as stored);
- a UTF-16 or UTF-32 file (a BOM, or many NUL bytes) is a DataError naming the file and an
  ``iconv`` command that converts it;
- bytes that are not valid UTF-8 are a DataError naming the file, the line and the byte
  offset (nothing is replaced silently: a file in another encoding would train on garbage).

Compression (``compression_of``, the one rule for corpus and task files): decided by the
file's first bytes (its magic number), not its name. gzip, bzip2, xz and Zstandard (and the
legacy ``.lzma`` format, which has no magic number, by its suffix) are decompressed while
reading (text and JSONL; Parquet files carry their own compression). Any other compression or
archive recognised by its magic bytes (zip, 7z, rar, lz4, lzip, Unix compress, snappy, lzop,
tar; brotli by its ``.br`` suffix) is ONE DataError naming the format and how to decompress it,
never the UTF-8/iconv advice (which would turn a compressed file into garbage). A file whose
name says gzip/bzip2/xz/zstd but whose bytes are not is an error too (a damaged download, or
an HTML page saved under that name). Files may be local or URLs (see ``dllm_jax.paths``).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import zlib
from typing import IO, Iterator

from dllm_jax import paths
from dllm_jax.errors import DataError

UTF8_BOM = b"\xef\xbb\xbf"
_UTF32_BOMS = {b"\xff\xfe\x00\x00": "UTF-32LE", b"\x00\x00\xfe\xff": "UTF-32BE"}
_UTF16_BOMS = {b"\xff\xfe": "UTF-16LE", b"\xfe\xff": "UTF-16BE"}
_NUL_SAMPLE = 1 << 16
_NUL_SHARE = 0.1  # UTF-16 of ASCII text is ~50% NUL bytes, UTF-32 ~75%; UTF-8 text has none
_PARQUET_BATCH_ROWS = 4096

# Compression read while reading (stdlib, plus `zstandard`, a dependency of dllm_jax).
READABLE_COMPRESSIONS = ("gzip", "bzip2", "xz", "zstd", "lzma")
# name suffix -> the compression it claims (".tgz" is gzip of a tar archive)
_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd",
             ".lzma": "lzma", ".br": "brotli", ".zip": "zip", ".7z": "7z", ".rar": "rar", ".lz4": "lz4",
             ".lz": "lzip", ".Z": "compress", ".sz": "snappy", ".lzo": "lzop"}
COMPRESSED_SUFFIXES = tuple(_SUFFIXES)
# what to run to get at the text, for the formats that are not read directly
_HOW = {"zip": "unzip {name}", "7z": "7z x {name}", "rar": "unrar x {name}", "lz4": "lz4 -d {name}",
        "lzip": "lzip -d {name}", "compress": "uncompress {name}", "snappy": "a snappy tool (e.g. python -m snappy -d {name} OUT)",
        "lzop": "lzop -d {name}", "brotli": "brotli -d {name}", "tar": "tar -xf {name}"}
_ARCHIVES = ("zip", "7z", "rar", "tar")
_HEAD = 512  # bytes looked at to tell the format (a tar header is 512 bytes)


def _is_bzip2(h: bytes) -> bool:
    """'BZh' + a block-size digit + a block or end-of-stream magic (never the start of text)."""
    return len(h) >= 10 and h[:3] == b"BZh" and h[3] in b"123456789" and h[4:10] in (b"1AY&SY", b"\x17rE8P\x90")


_MAGIC = (  # (test on the first bytes, compression or archive)
    (lambda h: h[:2] == b"\x1f\x8b", "gzip"), (_is_bzip2, "bzip2"), (lambda h: h[:6] == b"\xfd7zXZ\x00", "xz"),
    (lambda h: h[:4] == b"\x28\xb5\x2f\xfd", "zstd"), (lambda h: h[:4] in (b"PK\x03\x04", b"PK\x05\x06"), "zip"),
    (lambda h: h[:6] == b"7z\xbc\xaf\x27\x1c", "7z"), (lambda h: h[:6] == b"Rar!\x1a\x07", "rar"),
    (lambda h: h[:4] == b"\x04\x22\x4d\x18", "lz4"), (lambda h: h[:5] == b"LZIP\x01", "lzip"),
    (lambda h: h[:2] in (b"\x1f\x9d", b"\x1f\xa0"), "compress"), (lambda h: h[:10] == b"\xff\x06\x00\x00sNaPpY", "snappy"),
    (lambda h: h[:9] == b"\x89LZO\x00\r\n\x1a\n", "lzop"), (lambda h: h[257:262] == b"ustar", "tar"),
)


def _suffix_kind(path: str) -> str | None:
    """The compression a file's name claims ('.Z' is case-sensitive, the others are not)."""
    name = paths.basename(path)
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix) if suffix == ".Z" else name.lower().endswith(suffix):
            return kind
    return None


def _zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return False
    return True


def compression_of(head: bytes, path: str, by_name: bool = True) -> str | None:
    """The compression of a file from its first bytes (``head``, its first 512 bytes or all of a
    shorter file): 'gzip', 'bzip2', 'xz', 'zstd', 'lzma' (legacy, by the '.lzma' suffix) or None
    (not compressed). ``by_name=False``: look at the bytes only (a decompressed stream).

    Raises:
      DataError: one line naming ``path``, the format and the fix, when the bytes are a
        compression or archive that is not read here (zip, 7z, rar, lz4, lzip, compress,
        snappy, lzop, tar; brotli by its '.br' suffix; zstd without the `zstandard` package),
        or when the name claims gzip / bzip2 / xz / zstd / lzma and the bytes are not that.
    """
    kind = next((name for test, name in _MAGIC if test(head)), None)
    claimed = _suffix_kind(path) if by_name else None
    if kind is None and claimed in ("lzma", "brotli") and head:  # formats without a magic number
        kind = claimed
    if kind is None:
        if claimed in READABLE_COMPRESSIONS and head:
            name = _NAMES[claimed]
            raise DataError(
                f"{path!r} is not a valid {name} file: its name says {name} but its first bytes ({head[:8].hex(' ')}) "
                f"are not a {name} header; it is damaged or another format saved under that name: check the file "
                f"(e.g. `file {paths.basename(path)}`), or rename it without the compression suffix if it is plain text."
            )
        return None
    if kind == "zstd" and not _zstd_available():
        raise DataError(f"{path!r} is Zstandard-compressed and the `zstandard` package (a dependency of dllm_jax) is "
                        f"missing; pip install zstandard, or decompress it (`zstd -d {paths.basename(path)}`).")
    if kind in READABLE_COMPRESSIONS:
        return kind
    what = f"a {kind} archive (files packed in one)" if kind in _ARCHIVES else f"{kind}-compressed"
    how = _HOW.get(kind, "its tool").format(name=paths.basename(path))
    raise DataError(
        f"{path!r} is {what}, which dllm_jax does not read; extract it ({how}) and point at the extracted file(s), "
        "or recompress them with gzip, bzip2, xz or zstd, which are read directly."
    )


def compression(path: str) -> str | None:
    """The compression of the file at ``path``, by its content (``compression_of``)."""
    with paths.open_file(path, "rb") as f:
        return compression_of(f.read(_HEAD), path)


def _open_error(path: str, e: OSError) -> DataError:
    if isinstance(e, PermissionError):
        return DataError(f"{path!r} exists but cannot be read (permission denied); fix its permissions (e.g. chmod a+r) or remove it from data.paths.")
    if isinstance(e, FileNotFoundError):
        return DataError(f"{path!r} does not exist (any more); fix data.paths.")
    return DataError(f"cannot read {path!r}: {type(e).__name__}: {e}; fix the file or remove it from data.paths.")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every frame of a ``.zst`` stream, read in bounded chunks.

    zstandard's ``stream_reader`` ends quietly (0 bytes, no error) when the file stops inside
    a frame, so a truncated file would read as shorter or empty. Here each frame is decoded by
    a ``decompressobj`` and the end of the file while a frame is unfinished (``not obj.eof``)
    raises ``zstandard.ZstdError``. Memory: one compressed chunk and its output.
    """

    _CHUNK = 1 << 16

    def __init__(self, raw: IO[bytes]):
        import zstandard  # pylint: disable=import-outside-toplevel

        super().__init__()
        self._raw, self._dctx, self._error = raw, zstandard.ZstdDecompressor(), zstandard.ZstdError
        self._obj, self._pending, self._out = None, b"", b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._out:
            chunk, self._pending = self._pending or self._raw.read(self._CHUNK), b""
            if not chunk:
                if self._obj is not None and not self._obj.eof:
                    raise self._error("damaged or truncated zstd file: it ends inside a frame")
                return 0
            if self._obj is None or self._obj.eof:
                self._obj = self._dctx.decompressobj()
            self._out = self._obj.decompress(chunk)
            if self._obj.eof:
                self._pending = self._obj.unused_data
        n = min(len(b), len(self._out))
        b[:n], self._out = self._out[:n], self._out[n:]
        return n


@contextlib.contextmanager
def decompressing(raw: IO[bytes], path: str) -> Iterator[IO[bytes]]:
    """The (decompressed) bytes of the open binary file ``raw`` (named ``path`` in errors), the
    compression told by ``compression_of``; decompression errors -> one DataError naming the file.
    ``raw`` must be seekable (local files, fsspec files and BytesIO are)."""
    errors: tuple = (OSError, EOFError, zlib.error, lzma.LZMAError)
    kind = None
    try:
        kind = compression_of(raw.read(_HEAD), path)
        raw.seek(0)
        if kind is None:
            yield raw
            return
        if kind == "zstd":
            import zstandard  # pylint: disable=import-outside-toplevel

            errors += (zstandard.ZstdError,)
        stream = _DECOMPRESSORS[kind](raw)
        nested = compression_of(stream.peek(_HEAD)[:_HEAD], path, by_name=False)
        if nested is not None:
            raise DataError(f"{path!r} is {nested} inside {kind} (compressed twice); decompress it once "
                            f"(e.g. `{_TOOLS[kind]} {paths.basename(path)}`) and use the result.")
        yield stream
    except errors as e:  # gzip.BadGzipFile, zlib.error, lzma.LZMAError, ZstdError, EOFError (truncated), OSError
        if kind is None:
            raise _open_error(path, e) from e
        name = _NAMES[kind]
        raise DataError(
            f"{path!r} is not a valid {name} file ({type(e).__name__}: {e}); it is a damaged or truncated {name} "
            "file: download or compress it again."
        ) from e


_NAMES = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "zstd": "Zstandard", "lzma": "lzma"}
_TOOLS = {"gzip": "gunzip", "bzip2": "bunzip2", "xz": "unxz", "zstd": "unzstd", "lzma": "unlzma"}
_DECOMPRESSORS = {
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    "bzip2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    "xz": lambda raw: lzma.LZMAFile(raw, mode="rb", format=lzma.FORMAT_XZ),
    "lzma": lambda raw: lzma.LZMAFile(raw, mode="rb", format=lzma.FORMAT_ALONE),
    "zstd": lambda raw: io.BufferedReader(_ZstdFrames(raw)),
}


@contextlib.contextmanager
def open_decompressed(path: str) -> Iterator[IO[bytes]]:
    """A binary stream of the file's (decompressed) bytes (``decompressing``); OSError -> DataError."""
    try:
        raw = paths.open_file(path, "rb")
    except OSError as e:
        raise _open_error(path, e) from e
    try:
        with decompressing(raw, path) as stream:
            yield stream
    finally:
        raw.close()


def decompress_bytes(data: bytes, path: str) -> bytes:
    """``data`` (the bytes of ``path``) decompressed by the same rule as ``open_decompressed``."""
    with decompressing(io.BytesIO(data), path) as stream:
        return stream.read()


def read_decompressed(path: str) -> bytes:
    with open_decompressed(path) as f:
        return f.read()


def _after(path: str) -> str:
    try:
        return " (after decompression)" if compression(path) else ""
    except (DataError, OSError):
        return ""


_DECOMPRESS = {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc", "zstd": "zstd -dc", "lzma": "xz --format=lzma -dc"}


def convert_command(path: str, encoding: str) -> str:
    """The shell command that converts ``path`` from ``encoding`` to UTF-8. A compressed file is
    decompressed first (iconv on its compressed bytes would make garbage): e.g.
    `gzip -dc a.txt.gz | iconv -f LATIN1 -t UTF-8 > a.txt.gz.utf8.txt`."""
    name = paths.basename(path)
    try:
        kind = compression(path)
    except (DataError, OSError):
        kind = None
    if kind in _DECOMPRESS:
        return f"{_DECOMPRESS[kind]} {name} | iconv -f {encoding} -t UTF-8 > {name}.utf8.txt"
    return f"iconv -f {encoding} -t UTF-8 {name} > {name}.utf8"


def check_not_utf16_32(head: bytes, path: str) -> None:
    """DataError if ``head`` (the first bytes of a file) is UTF-16 or UTF-32."""
    encoding = next((enc for bom, enc in _UTF32_BOMS.items() if head.startswith(bom)), None)
    encoding = encoding or next((enc for bom, enc in _UTF16_BOMS.items() if head.startswith(bom)), None)
    how, src = "starts with its byte-order mark", (encoding or "")[:6]  # iconv reads the BOM: UTF-16 / UTF-32
    if encoding is None:
        sample = head[:_NUL_SAMPLE]
        nul = sample.count(0)
        if not sample or nul / len(sample) <= _NUL_SHARE:
            return
        wide = nul / len(sample) > 0.6
        if wide:
            encoding = "UTF-32LE" if sample[0::4].count(0) < sample[3::4].count(0) else "UTF-32BE"
        else:
            encoding = "UTF-16LE" if sample[0::2].count(0) < sample[1::2].count(0) else "UTF-16BE"
        how, src = f"has {100 * nul // len(sample)}% NUL bytes", encoding
    raise DataError(
        f"{path!r} looks like {encoding}, not UTF-8 (it {how}{_after(path)}); dllm_jax reads UTF-8 only. Convert it, "
        f"e.g. `{convert_command(path, src)}`, and use the converted file."
    )


def _utf8_error(path: str, raw: bytes, e: UnicodeDecodeError, base: int = 0, line: int | None = None) -> DataError:
    off = base + e.start
    line = line if line is not None else raw.count(b"\n", 0, e.start) + 1
    bad = raw[e.start:e.start + 4].hex(" ")
    return DataError(
        f"{path!r} is not valid UTF-8: line {line}, byte offset {off}{_after(path)} (bytes {bad}); dllm_jax "
        f"reads UTF-8 only. Convert the file from its encoding, e.g. `{convert_command(path, 'LATIN1')}` "
        "(LATIN1 = ISO-8859-1; use the file's real encoding)."
    )


def decode_text(raw: bytes, path: str) -> str:
    """The UTF-8 text of a whole text file: BOM removed, CRLF / CR -> LF.

    Raises:
      DataError: the file is UTF-16/32 or not valid UTF-8 (naming file, line, byte offset).
    """
    check_not_utf16_32(raw, path)
    start = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        e.start += start
        raise _utf8_error(path, raw, e) from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_file(path: str) -> str:
    """A (possibly .gz/.zst) UTF-8 text file as ``decode_text`` normalises it."""
    return decode_text(read_decompressed(path), path)


def _record_text(value, path: str, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    got = "missing (null)" if value is None else f"a {type(value).__name__}"
    raise DataError(f"{path!r} {where}: the field data.text_key={key!r} is {got}, not text; set data.text_key to the text field or fix the record.")


def json_object(line: str, path: str, lineno: int) -> dict:
    """One line of a JSON-lines file (a corpus or a task file) as a dict; DataError naming the
    file and line when it is not valid JSON or not a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path!r} line {lineno} is not valid JSON ({e.msg} at column {e.colno}); "
                        "every line of a JSONL file must be one JSON object.") from None
    if not isinstance(record, dict):
        raise DataError(f"{path!r} line {lineno} is a JSON {type(record).__name__}, not an object; "
                        "every line of a JSONL file must be one JSON object.")
    return record


def iter_jsonl_texts(path: str, key: str, limit: int = 0) -> Iterator[str]:
    """The non-blank ``record[key]`` strings of a JSON-lines file, in order.

    Blank lines are skipped; the value is used as stored (no normalisation).

    Raises:
      DataError: naming the file and line for bytes that are not UTF-8, a line that is not a
        JSON object, or a record without a text ``key``.
    """
    n = 0
    with open_decompressed(path) as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            if lineno == 1:
                check_not_utf16_32(line + f.peek(_NUL_SAMPLE)[:_NUL_SAMPLE] if hasattr(f, "peek") else line, path)
                if line.startswith(UTF8_BOM):
                    line, offset = line[len(UTF8_BOM):], len(UTF8_BOM)
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, line, e, base=offset, line=lineno) from e
            offset += len(line)
            if not s.strip():
                continue
            record = json_object(s, path, lineno)
            if key not in record:
                raise DataError(
                    f"{path!r} line {lineno} has no field data.text_key={key!r} (fields: {sorted(record)[:10]}); "
                    "set data.text_key to the field holding the text."
                )
            text = _record_text(record[key], path, f"line {lineno}", key)
            if text.strip():
                yield text
                n += 1
                if limit and n >= limit:
                    return


def iter_parquet_texts(path: str, key: str, limit: int = 0) -> Iterator[str]:
    """The non-blank strings of column ``key`` of a Parquet file, read one batch of rows at a
    time (never the whole file), in row order; values used as stored.

    Raises:
      DataError: the file is not Parquet, has no column ``key``, the column is not text, or
        a row's value is null (naming the row).
    """
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    try:
        raw = paths.open_file(path, "rb")
    except OSError as e:
        raise _open_error(path, e) from e
    with raw:
        try:
            pf = pq.ParquetFile(raw)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path!r} is not a readable Parquet file ({e}); fix data.paths or data.source.") from e
        names = pf.schema_arrow.names
        if key not in names:
            raise DataError(f"{path!r} has no column data.text_key={key!r} (columns: {names[:20]}); set data.text_key to the text column.")
        ctype = pf.schema_arrow.field(key).type
        if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype) or pa.types.is_string_view(ctype)):
            raise DataError(f"{path!r} column data.text_key={key!r} has type {ctype}, not text (string); set data.text_key to a text column.")
        row, n = 0, 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[key]):
            for value in batch.column(0).to_pylist():
                if value is None:
                    raise DataError(f"{path!r} row {row} (counting from 0): the column data.text_key={key!r} is null, not text; drop or fill the row.")
                row += 1
                if value.strip():
                    yield value
                    n += 1
                    if limit and n >= limit:
                        return
