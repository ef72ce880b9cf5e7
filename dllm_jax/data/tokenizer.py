"""Tokenizers: SentencePiece (load, or train deterministically on a corpus) and Hugging Face
``tokenizer.json`` files (load only: GPT-NeoX, Llama 3, Qwen ...), behind one interface.

Both kinds expose ``vocab_size``, ``pad_id``, ``eos_id``, ``mask_id``, ``fingerprint``,
``model_bytes``, ``filename``, ``encode``, ``encode_batch``, ``decode``, ``id_to_piece``
and ``save``; ``load_tokenizer(path)`` and ``tokenizer_from_bytes(b)`` pick the kind from
the file's content. The absorbing-diffusion [MASK] token is, by default, NOT a piece of
either: it is ``mask_id == vocab_size``, one past the real vocabulary (``mask_is_extra``),
so models that need it use ``vocab_size + 1`` embedding rows. A released diffusion LM
(LLaDA, Dream, SDAR) was trained with a mask piece of its own tokenizer: ``mask_token``
(``data.mask_token``, set by ``init.from_hf``) names that special token, and ``mask_id`` is
its id, inside the vocabulary. Either way the ids that are never predicted, sampled or
scored are ``ids >= vocab_size`` and ``mask_id`` (``objectives.common.real_ids``).

EOS and padding (one rule for both kinds):

- EOS (``eos_id``) ends every document in the packed data; it is a real, trainable token:
  AR predicts it, the MDM masks it like any token, it belongs to its document's segment,
  validation counts it as training does, and samplers may emit it (a row stops there).
  It is the token named by ``data.eos_token``, else the tokenizer's own (SentencePiece:
  the model's EOS piece; tokenizer.json: the first of ``HF_EOS_CANDIDATES`` present).
- Padding (``pad_id``) only fills positions that hold no token (sampling canvases, ragged
  batches); packed training rows have none. It is an id no real token has: the piece named
  by ``data.pad_token``, else the tokenizer's own pad piece (SentencePiece's pad;
  ``HF_PAD_CANDIDATES``) when it has one other than EOS, else an EXTRA id
  ``vocab_size + 1``, one past [MASK] (``pad_is_extra``; the model then has one more
  embedding row, ``train_step.model_vocab_rows``). Never EOS. Ids >= ``vocab_size`` and
  ``mask_id`` are never predicted, and a pad piece inside the vocabulary is banned by the samplers.
- A named mask token (``data.mask_token``) must be a special token too, and neither EOS nor
  the pad token. It does not change the token data, so it is not part of ``fingerprint``
  nor of ``overrides`` (a store's identity); ``mask_names`` holds it.
- A named EOS / pad token must be a special token of the tokenizer (a control piece of a
  SentencePiece model; an added special token of a tokenizer.json), else ConfigError.
- ``fingerprint`` is the hash of the file, extended with the (eos, pad) ids when names
  choose other ids than the automatic rule (a different EOS makes different token data).

SentencePiece models trained here: pad=0, unk=1, eos=2, no BOS.

Trained tokenizers are lossless on ordinary text (including code): no normalisation,
whitespace kept as is, ``\\n`` and ``\\t`` are pieces of their own, and characters the
trainer did not keep fall back to UTF-8 byte pieces (``byte_fallback``).

Text handling (the same for both kinds; ``encode(text, split_special_tokens=True)``):

- Special-token strings in text are text. With ``split_special_tokens=True`` (the default;
  transformers' option of that name; tiktoken refuses such text by default, raising, where a
  corpus that merely quotes ``</s>`` should still train) a literal ``</s>`` or ``<|endoftext|>``
  in a document is tokenised as the characters it is, never as the EOS id (which would cut the
  document in two). Special =
  SentencePiece control and unknown pieces (``<pad>``, ``</s>``, ``<unk>``), Hugging Face added
  tokens marked ``special``. ``split_special_tokens=False`` maps those strings to their ids
  (for corpora that mark boundaries with them on purpose; SentencePiece then encodes the text
  between them separately, so a model that adds a dummy-prefix space adds it to each part, as
  transformers' legacy slow tokenizers do). SentencePiece user-defined
  symbols and non-special HF added tokens are ordinary pieces and match text either way.
- U+2581 ('▁'). SentencePiece uses it for a space, so a literal '▁' would decode as ' '. A
  SentencePiece model with byte pieces and no whitespace normalisation (every model trained
  here) encodes a literal '▁' as its three UTF-8 byte pieces, which decode back to '▁': text
  round-trips. Other tokenizers that cannot keep it report ``keeps_u2581 = False`` and the
  store preparation counts and reports the character (``dllm_jax.data.prepare``).
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from dllm_jax import paths
from dllm_jax.errors import ConfigError, DataError

logger = logging.getLogger("dllm_jax")

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
_USER_SYMBOLS = ("\n", "\t")
# 3 special ids + 256 byte pieces + the user symbols; the trainer also needs one piece per
# distinct character it keeps, so real corpora need a few dozen to a few hundred more.
MIN_VOCAB_SIZE = 3 + 256 + len(_USER_SYMBOLS)
# The trainer sees a bounded, deterministic sample of the corpus so that it trains in
# seconds: at least this many characters, more for large vocabularies.
_MIN_SAMPLE_CHARS = 1_000_000
_SAMPLE_CHARS_PER_PIECE = 200
_MAX_SENTENCE_CHARS = 2048
# Fixed (not os.cpu_count()): the thread count is stored in the model proto, and the same
# corpus must give the same model bytes (and fingerprint) on every machine.
_TRAIN_THREADS = 4
# Changes whenever the training recipe above (or SentencePiece) changes; part of the
# tokenizer cache key.
TRAINER_VERSION = f"dllm_jax-1/sentencepiece-{spm.__version__}"
# Changes whenever the text handling of encode (special-token strings, U+2581) changes: part of
# a token store's identity, so stores tokenised by an older rule are not reused.
ENCODING_VERSION = 2
SPACE_SYMBOL = "\u2581"  # SentencePiece's whitespace meta symbol '▁'


def _encode_failed(texts: Sequence[str], error: Exception) -> Exception:
    """The error to raise when a tokenizer refused `texts`: a DataError naming the first text
    with a lone surrogate (bytes that were not UTF-8, decoded with surrogateescape, e.g. from
    the command line; neither SentencePiece nor `tokenizers` can encode them), else `error`."""
    from dllm_jax.files import not_utf8

    for n, text in enumerate(texts):
        where = not_utf8(text) if isinstance(text, str) else None
        if where is not None:
            return DataError(f"text {n} to tokenize is not valid UTF-8 ({where}); decode it from its real "
                             "encoding (e.g. bytes.decode('latin-1')) or convert it with iconv -f latin1 -t utf-8")
    return error


def _refuses_non_utf8(method):
    """Wraps `encode` / `encode_batch`: text the tokenizer library refuses because it holds
    lone surrogates is a DataError naming it (`_encode_failed`); other errors pass unchanged."""

    @functools.wraps(method)
    def wrapped(self, texts, *args, **kwargs):
        if not isinstance(texts, str):
            texts = list(texts)
        try:
            return method(self, texts, *args, **kwargs)
        except (RuntimeError, TypeError, UnicodeError) as e:
            raise _encode_failed([texts] if isinstance(texts, str) else texts, e) from None

    return wrapped


class Tokenizer:
    """A SentencePiece model plus the ids the rest of the library relies on. EOS is the piece
    named ``eos_token`` (a control piece) or the model's EOS; pad the piece named
    ``pad_token``, the model's pad piece, or the extra id ``vocab_size + 1`` (module docstring).

    Raises:
      DataError: the bytes are not a SentencePiece model, or it has no EOS piece.
      ConfigError: ``eos_token`` / ``pad_token`` is no control piece of it, or the pad is EOS.
    """

    kind = "sentencepiece"
    filename = "tokenizer.model"  # its name in a workdir or token store

    def __init__(self, model_bytes: bytes, source: str = "<bytes>", eos_token: str | None = None, pad_token: str | None = None,
                 mask_token: str | None = None):
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_bytes)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError variants
            raise DataError(
                f"{source} is not a valid SentencePiece model ({e}); point data.tokenizer at "
                "a .model file written by SentencePiece, or set data.tokenizer='' to train one."
            ) from e
        self._sp = sp
        self.model_bytes = bytes(model_bytes)
        self.vocab_size = int(sp.GetPieceSize())
        self.unk_id = int(sp.unk_id())
        self.bos_id = int(sp.bos_id())

        def find(name):
            i = int(sp.PieceToId(name))
            return i if 0 <= i < self.vocab_size and sp.IdToPiece(i) == name else None

        auto_eos = int(sp.eos_id()) if sp.eos_id() >= 0 else None
        _choose_special_ids(
            self, source, find=find, is_special=lambda i: bool(sp.IsControl(i)),
            specials=lambda: [sp.IdToPiece(i) for i in range(self.vocab_size) if sp.IsControl(i)],
            auto_eos=auto_eos, auto_pad=lambda eos: int(sp.pad_id()) if 0 <= sp.pad_id() != eos else None,
            eos_token=eos_token, pad_token=pad_token, mask_token=mask_token,
            no_eos=f"SentencePiece model {source} has no EOS piece (eos_id={int(sp.eos_id())}); train it with eos_id set "
                   "(e.g. eos_id=2), let dllm_jax train one (data.tokenizer=''), or set data.eos_token to the control piece "
                   "that ends a document")
        self._init_text_handling()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, b: bytes, **names) -> "Tokenizer":
        return cls(b, **names)

    @classmethod
    def load(cls, path: str, **names) -> "Tokenizer":
        return cls(_read_tokenizer_file(path), source=repr(path), **names)

    def save(self, path: str) -> None:
        """Writes the model bytes atomically (a reader never sees half a file)."""
        _atomic_write(path, self.model_bytes)

    # -- encoding -----------------------------------------------------------------------
    def _init_text_handling(self) -> None:
        """How text reaches SentencePiece (module docstring): a literal U+2581 becomes its byte
        pieces when the model has them and encodes text in independent pieces exactly (no dummy
        prefix, no whitespace squeezing: probed); special pieces are found lazily."""
        sp = self._sp
        byte_ids = [sp.PieceToId(f"<0x{b:02X}>") for b in SPACE_SYMBOL.encode("utf-8")]
        plain = lambda t: sp.EncodeAsIds(t)  # noqa: E731
        splittable = sp.DecodeIds(plain(" a ") + plain("b  ")) == " a b  "
        self._space_ids = byte_ids if splittable and all(sp.IsByte(i) for i in byte_ids) else None
        self.keeps_u2581 = self._space_ids is not None or sp.DecodeIds(plain("a\u2581b")) == "a\u2581b"
        self._patterns: dict[bool, re.Pattern | None] = {}
        self._specials: dict[str, int] | None = None

    def special_pieces(self) -> dict[str, int]:
        """Piece -> id of the control and unknown pieces (``<pad>``, ``</s>``, ``<unk>``...)."""
        if self._specials is None:
            sp = self._sp
            self._specials = {sp.IdToPiece(i): i for i in range(self.vocab_size)
                              if (sp.IsControl(i) or sp.IsUnknown(i)) and sp.IdToPiece(i)}
        return self._specials

    def _pattern(self, split_special_tokens: bool) -> "re.Pattern | None":
        """What is cut out of text before SentencePiece sees it: '▁' (when it can be kept as
        bytes) and, unless ``split_special_tokens``, the special pieces' strings (longest first)."""
        key = bool(split_special_tokens)
        if key not in self._patterns:
            alts = [] if key else sorted(self.special_pieces(), key=len, reverse=True)
            if self._space_ids is not None:
                alts.append(SPACE_SYMBOL)
            self._patterns[key] = re.compile("|".join(map(re.escape, alts))) if alts else None
        return self._patterns[key]

    def _cut_ids(self, piece: str) -> list[int]:
        return list(self._space_ids) if piece == SPACE_SYMBOL else [self.special_pieces()[piece]]

    @_refuses_non_utf8
    def encode(self, text: str, split_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; no BOS or EOS added. ``split_special_tokens`` (default True):
        special-token strings in ``text`` are tokenised as text (module docstring)."""
        pattern = self._pattern(split_special_tokens)
        if pattern is None or not pattern.search(text):
            return self._sp.EncodeAsIds(text)
        return self.encode_batch([text], num_threads=1, split_special_tokens=split_special_tokens)[0]

    @_refuses_non_utf8
    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None,
                     split_special_tokens: bool = True) -> list[list[int]]:
        """Encodes many texts at once with SentencePiece's threaded batch encoder (as ``encode``)."""
        texts = list(texts)
        if not texts:
            return []
        threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        pattern = self._pattern(split_special_tokens)
        if pattern is None:
            return self._sp.Encode(texts, out_type=int, num_threads=threads)
        # texts with something to cut out: encode the text between the cuts, then splice the cuts' ids in
        parts, cuts = [], []
        for t in texts:
            pieces = pattern.split(t) if pattern.search(t) else [t]
            cuts.append(pattern.findall(t) if len(pieces) > 1 else [])
            parts.append(pieces)
        flat = [p for pieces in parts for p in pieces]
        if len(flat) == len(texts):  # nothing cut out of any text
            return self._sp.Encode(texts, out_type=int, num_threads=threads)
        ids = iter(self._sp.Encode(flat, out_type=int, num_threads=threads))
        out = []
        for pieces, found in zip(parts, cuts):
            row = list(next(ids))
            for c in found:
                row += self._cut_ids(c)
                row += next(ids)
            out.append(row)
        return out

    def decode(self, ids) -> str:
        """Text of ``ids``, dropping pad, mask and out-of-range ids (EOS decodes to nothing)."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = (arr >= 0) & (arr < self.vocab_size) & (arr != self.pad_id) & (arr != self.mask_id)
        return self._sp.DecodeIds([int(i) for i in arr[keep]])

    def id_to_piece(self, i: int) -> str:
        if self.mask_is_extra and i == self.mask_id:
            return "[MASK]"
        if self.pad_is_extra and i == self.pad_id:
            return "[PAD]"
        return self._sp.IdToPiece(int(i))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"


def _read_tokenizer_file(path: str) -> bytes:
    if not paths.isfile(path):
        raise DataError(
            f"tokenizer file {path!r} does not exist; set data.tokenizer to an existing "
            "SentencePiece .model or Hugging Face tokenizer.json file, or to '' to train one on the corpus."
        )
    try:
        return paths.read_bytes(path)
    except OSError as e:
        raise DataError(f"cannot read tokenizer file {path!r} ({type(e).__name__}: {e}); fix its permissions or data.tokenizer.") from e


def _atomic_write(path: str, data: bytes) -> None:
    paths.write_bytes(path, data)


# Vocabulary entries listed as "tokens that look special" in errors: <...>, <|...|>, [...].
_LOOKS_SPECIAL = re.compile(r"^(<\|[^\s]+\|>|<[^<>\s]+>|\[[A-Za-z_]+\])$")


def tokenizer_names(data_cfg) -> dict:
    """The ``eos_token`` / ``pad_token`` arguments of the loaders from a config's ``data``
    section (``data.eos_token`` / ``data.pad_token``; '' = the automatic rule, i.e. None), and
    ``mask_token`` (``data.mask_token``; '' = the extra id ``vocab_size``)."""
    get = data_cfg.get if hasattr(data_cfg, "get") else (lambda k, d=None: getattr(data_cfg, k, d))
    return {"eos_token": get("eos_token", "") or None, "pad_token": get("pad_token", "") or None,
            "mask_token": get("mask_token", "") or None}


def _choose_special_ids(tok, source: str, *, find, is_special, specials, auto_eos, auto_pad, eos_token, pad_token,
                        no_eos: str, mask_token: str | None = None) -> None:
    """Sets ``eos_id``, ``pad_id``, ``pad_is_extra``, ``mask_id``, ``mask_is_extra``, ``mask_names``
    (``{'mask_token': name}`` when one is given, else empty), ``overrides`` (the names given, to rebuild
    the same tokenizer: ``tokenizer_from_bytes(b, **tok.overrides)``) and ``fingerprint`` of
    ``tok`` (which has ``model_bytes`` and ``vocab_size``) by the module docstring's rule.

    find(name) -> id or None; is_special(id) -> bool; specials() -> names to list in errors;
    auto_eos: the automatic EOS id or None; auto_pad(eos_id) -> the automatic pad id or None."""

    def shown() -> str:
        names = specials()
        more = f" (and {len(names) - 20} more)" if len(names) > 20 else ""
        return (", ".join(repr(n) for n in names[:20]) + more) if names else "none"

    def named(key: str, name: str) -> int:
        i = find(name)
        if i is None:
            raise ConfigError(f"{key}={name!r} is not a token of the tokenizer {source}; tokens there that look special: "
                              f"{shown()}. Set {key} to one of them, or to '' for the automatic choice.")
        if not is_special(i):
            raise ConfigError(f"{key}={name!r} is an ordinary piece of the tokenizer {source} (id {i}), so text would hold "
                              f"it too; name a special token (its tokens that look special: {shown()}), or set {key}=''.")
        return i

    eos = named("data.eos_token", eos_token) if eos_token else auto_eos
    if eos is None:
        raise DataError(f"{no_eos}; tokens there that look special: {shown()}.")
    extra = tok.vocab_size + 1  # one past [MASK]: no real token has it
    if pad_token:
        pad = named("data.pad_token", pad_token)
        if pad == eos:
            raise ConfigError(f"data.pad_token={pad_token!r} is the EOS token (id {eos}); padding needs an id of its own "
                              "(EOS is a real token that the model learns and emits): set data.pad_token='' for an extra "
                              "id, or name another special token.")
    else:
        pad = auto_pad(eos)
        pad = extra if pad is None else pad
    tok.eos_id, tok.pad_id, tok.pad_is_extra = int(eos), int(pad), pad == extra
    tok.mask_id, tok.mask_names = tok.vocab_size, {}
    if mask_token:
        mask = named("data.mask_token", mask_token)
        if mask in (tok.eos_id, tok.pad_id):
            raise ConfigError(f"data.mask_token={mask_token!r} is the {'EOS' if mask == tok.eos_id else 'pad'} token (id {mask}); "
                              "[MASK] needs an id of its own: name the checkpoint's mask token, or set data.mask_token=''.")
        tok.mask_id, tok.mask_names = int(mask), {"mask_token": mask_token}
    tok.mask_is_extra = tok.mask_id == tok.vocab_size
    tok.overrides = {k: v for k, v in (("eos_token", eos_token), ("pad_token", pad_token)) if v}
    base = hashlib.sha256(tok.model_bytes).hexdigest()[:16]
    auto = None
    if auto_eos is not None:
        p = auto_pad(auto_eos)
        auto = (auto_eos, extra if p is None else p)
    same = auto == (tok.eos_id, tok.pad_id)
    tok.fingerprint = base if same else hashlib.sha256(f"{base}/eos={tok.eos_id}/pad={tok.pad_id}".encode()).hexdigest()[:16]


# Special tokens that mark the end of a document, in the order they are looked for.
# GPT-2/NeoX/Qwen: <|endoftext|>; Llama 3: <|end_of_text|>; Llama 2/Mistral: </s>; Gemma: <eos>.
HF_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")
HF_PAD_CANDIDATES = ("<pad>", "<|padding|>", "[PAD]", "<|pad|>")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` model (the bytes of a ``tokenizer.json``).

    ``vocab_size`` counts added tokens too (``get_vocab_size(with_added_tokens=True)``), so
    every id the tokenizer can emit is < vocab_size; ``mask_id = vocab_size``. EOS is
    ``eos_token`` (``data.eos_token``) when given, else the first of ``HF_EOS_CANDIDATES``
    present in the vocabulary; pad is ``pad_token`` when given, else the first of
    ``HF_PAD_CANDIDATES`` present, else the extra id ``vocab_size + 1`` (never EOS: see the
    module docstring). Encoding adds no special tokens (documents get EOS appended by the
    data pipeline, as with SentencePiece).

    Raises:
      DataError: the bytes are not a tokenizer.json, or it has no recognisable EOS token.
      ConfigError: ``eos_token`` / ``pad_token`` is not an added special token of it, or
        the pad token is the EOS token.
    """

    kind = "hf"
    filename = "tokenizer.json"

    def __init__(self, json_bytes: bytes, source: str = "<bytes>", eos_token: str | None = None, pad_token: str | None = None,
                 mask_token: str | None = None):
        try:
            from tokenizers import Tokenizer as _HFTok  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise DataError(f"{source} is a Hugging Face tokenizer.json; install the `tokenizers` package to use it.") from e
        try:
            tok = _HFTok.from_str(bytes(json_bytes).decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise DataError(
                f"{source} is not a valid Hugging Face tokenizer.json ({e}); point data.tokenizer at the "
                "tokenizer.json of a Hugging Face model directory, or at a SentencePiece .model file."
            ) from e
        self._tok = tok
        self.model_bytes = bytes(json_bytes)
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(self.vocab_size, max(vocab.values(), default=-1) + 1)
        self.unk_id = -1
        self.bos_id = -1
        added = tok.get_added_tokens_decoder()

        def specials():
            names = [added[i].content for i in sorted(added) if added[i].special]
            return names + sorted((n for n in vocab if _LOOKS_SPECIAL.match(n) and n not in names), key=vocab.get)

        auto_eos = next((int(vocab[n]) for n in HF_EOS_CANDIDATES if n in vocab), None)
        _choose_special_ids(
            self, source, find=lambda n: int(vocab[n]) if n in vocab else None,
            is_special=lambda i: i in added and bool(added[i].special), specials=specials, auto_eos=auto_eos,
            auto_pad=lambda eos: next((int(vocab[n]) for n in HF_PAD_CANDIDATES if n in vocab and vocab[n] != eos), None),
            eos_token=eos_token, pad_token=pad_token, mask_token=mask_token,
            no_eos=f"Hugging Face tokenizer {source} has none of the end-of-text tokens {list(HF_EOS_CANDIDATES)}; set "
                   "data.eos_token to the special token that ends a document (dllm_jax appends one to every document)")
        self._init_text_handling()

    def _init_text_handling(self) -> None:
        """Special-token strings in text are text unless asked otherwise (module docstring):
        ``encode_special_tokens=True`` on the tokenizer used by default, a second instance
        with it False for ``split_special_tokens=False`` (made when first needed)."""
        self._tok.encode_special_tokens = True
        self._tok_specials = None
        probe = "a\u2581b"
        self.keeps_u2581 = self._tok.decode(self._tok.encode(probe, add_special_tokens=False).ids, skip_special_tokens=False) == probe

    def _encoder(self, split_special_tokens: bool):
        if split_special_tokens:
            return self._tok
        if self._tok_specials is None:
            from tokenizers import Tokenizer as _HFTok  # pylint: disable=import-outside-toplevel

            self._tok_specials = _HFTok.from_str(self.model_bytes.decode("utf-8"))
            self._tok_specials.encode_special_tokens = False
        return self._tok_specials

    @classmethod
    def from_bytes(cls, b: bytes, **names) -> "HFTokenizer":
        return cls(b, **names)

    @classmethod
    def load(cls, path: str, **names) -> "HFTokenizer":
        return cls(_read_tokenizer_file(path), source=repr(path), **names)

    def save(self, path: str) -> None:
        _atomic_write(path, self.model_bytes)

    @_refuses_non_utf8
    def encode(self, text: str, split_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, no special tokens added; ``split_special_tokens`` (default True):
        special-token strings in ``text`` are tokenised as text (module docstring)."""
        return self._encoder(split_special_tokens).encode(text, add_special_tokens=False).ids

    @_refuses_non_utf8
    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None,
                     split_special_tokens: bool = True) -> list[list[int]]:
        texts = list(texts)
        if not texts:
            return []
        return [e.ids for e in self._encoder(split_special_tokens).encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of ``ids``, dropping pad, EOS, mask and out-of-range ids."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = (arr >= 0) & (arr < self.vocab_size) & (arr != self.pad_id) & (arr != self.eos_id) & (arr != self.mask_id)
        return self._tok.decode([int(i) for i in arr[keep]], skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        if self.mask_is_extra and i == self.mask_id:
            return "[MASK]"
        if self.pad_is_extra and i == self.pad_id:
            return "[PAD]"
        return self._tok.id_to_token(int(i)) or ""

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"


def _is_json(b: bytes) -> bool:
    return bytes(b[:64]).lstrip().startswith(b"{")


def tokenizer_from_bytes(b: bytes, source: str = "<bytes>", eos_token: str | None = None, pad_token: str | None = None,
                         mask_token: str | None = None):
    """A ``Tokenizer`` (SentencePiece proto) or ``HFTokenizer`` (tokenizer.json), by content.
    ``eos_token`` / ``pad_token``: names of the EOS / pad tokens (None = automatic; see the
    module docstring), e.g. ``**tokenizer_names(config.data)``."""
    cls = HFTokenizer if _is_json(b) else Tokenizer
    return cls(b, source=source, eos_token=eos_token, pad_token=pad_token, mask_token=mask_token)


def load_tokenizer(path: str, eos_token: str | None = None, pad_token: str | None = None, mask_token: str | None = None):
    """Loads a SentencePiece ``.model`` or a Hugging Face ``tokenizer.json`` (decided by content).

    A directory is accepted too: its ``tokenizer.json`` (a Hugging Face model directory) or
    ``tokenizer.model``. ``eos_token`` / ``pad_token`` as in ``tokenizer_from_bytes``.

    Raises:
      DataError: the path does not exist or is not a tokenizer of either kind.
      ConfigError: a named EOS / pad token is not a special token of it.
    """
    if paths.isdir(path):
        for name in (HFTokenizer.filename, Tokenizer.filename):
            if paths.isfile(paths.join(paths.expand(path), name)):
                return load_tokenizer(paths.join(paths.expand(path), name), eos_token=eos_token, pad_token=pad_token, mask_token=mask_token)
        raise DataError(f"tokenizer directory {path!r} has neither tokenizer.json nor tokenizer.model; point data.tokenizer at a tokenizer file.")
    return tokenizer_from_bytes(_read_tokenizer_file(path), source=repr(path), eos_token=eos_token, pad_token=pad_token,
                                mask_token=mask_token)


def _training_sentences(documents: Iterable[str]) -> list[str]:
    """Non-blank lines of all documents, long lines cut into pieces the trainer accepts."""
    out = []
    for doc in documents:
        for line in doc.split("\n"):
            if not line.strip():
                continue
            for i in range(0, len(line), _MAX_SENTENCE_CHARS):
                out.append(line[i:i + _MAX_SENTENCE_CHARS])
    return out


def _bounded_sample(sentences: list[str], max_chars: int) -> list[str]:
    """Every k-th sentence, k chosen so the sample has about ``max_chars`` characters.

    A stride (not a random draw) keeps it deterministic and spread over the whole corpus.
    """
    total = sum(len(s) for s in sentences)
    stride = max(1, -(-total // max_chars))
    return sentences[::stride]


def train_tokenizer(
    documents: Iterable[str], vocab_size: int, out_path: str | None, model_type: str = "unigram"
) -> Tokenizer:
    """Trains a SentencePiece model on ``documents`` and saves it to ``out_path`` (if given).

    Deterministic: the same documents and arguments give the same model bytes. With a small
    corpus the vocabulary may come out smaller than ``vocab_size`` (hard_vocab_limit=False).
    """
    if model_type not in ("unigram", "bpe"):
        raise DataError(
            f"data.tokenizer_type={model_type!r} is not supported; use 'unigram' or 'bpe'."
        )
    vocab_size = int(vocab_size)
    if vocab_size < MIN_VOCAB_SIZE + 16:
        raise DataError(
            f"data.vocab_size={vocab_size} is too small: a trained tokenizer holds {MIN_VOCAB_SIZE} "
            "fixed pieces (specials, 256 byte-fallback pieces, newline, tab) plus the corpus's "
            "characters; use data.vocab_size >= 512."
        )
    sentences = _training_sentences(documents)
    if not sentences:
        raise DataError(
            "cannot train a tokenizer: the documents contain no text; check data.paths / "
            "data.tfds_name, or give a trained model in data.tokenizer."
        )
    sample = _bounded_sample(sentences, max(_MIN_SAMPLE_CHARS, _SAMPLE_CHARS_PER_PIECE * vocab_size))
    extra = {}
    if model_type == "unigram":
        extra = dict(seed_sentencepiece_size=max(50_000, 4 * vocab_size), shrinking_factor=0.6)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sample),
            model_writer=writer,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=list(_USER_SYMBOLS),
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=4 * _MAX_SENTENCE_CHARS,  # bytes; lines were cut by characters
            num_threads=_TRAIN_THREADS,
            minloglevel=2,
            **extra,
        )
    except RuntimeError as e:
        raise DataError(
            f"SentencePiece could not train a {model_type} tokenizer with data.vocab_size="
            f"{vocab_size} on {len(sample)} lines: {e}. Try a larger data.vocab_size (the corpus "
            "may have many distinct characters) or more text."
        ) from e
    tok = Tokenizer(writer.getvalue(), source="<trained>")
    if out_path:
        tok.save(out_path)
    logger.info(
        "trained a %s tokenizer: %d pieces (asked for %d) on %d of %d lines, fingerprint %s",
        model_type, tok.vocab_size, vocab_size, len(sample), len(sentences), tok.fingerprint,
    )
    return tok
