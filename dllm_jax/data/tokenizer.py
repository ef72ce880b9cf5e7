"""Tokenizers: SentencePiece (load, or train deterministically on a corpus) and Hugging Face
``tokenizer.json`` files (load only: GPT-NeoX, Llama 3, Qwen ...), behind one interface.

Both kinds expose ``vocab_size``, ``pad_id``, ``eos_id``, ``mask_id``, ``fingerprint``,
``model_bytes``, ``filename``, ``encode``, ``encode_batch``, ``decode``, ``id_to_piece``
and ``save``; ``load_tokenizer(path)`` and ``tokenizer_from_bytes(b)`` pick the kind from
the file's content. The absorbing-diffusion [MASK] token is NOT a piece of either: it is
``mask_id == vocab_size``, one past the real vocabulary, so models that need it use
``vocab_size + 1`` embedding rows.

SentencePiece models trained here: pad=0, unk=1, eos=2, no BOS.

Trained tokenizers are lossless on ordinary text (including code): no normalisation,
whitespace kept as is, ``\\n`` and ``\\t`` are pieces of their own, and characters the
trainer did not keep fall back to UTF-8 byte pieces (``byte_fallback``).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from dllm_jax import paths
from dllm_jax.errors import DataError

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


class Tokenizer:
    """A SentencePiece model plus the ids the rest of the library relies on."""

    kind = "sentencepiece"
    filename = "tokenizer.model"  # its name in a workdir or token store

    def __init__(self, model_bytes: bytes, source: str = "<bytes>"):
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
        self.fingerprint = hashlib.sha256(self.model_bytes).hexdigest()[:16]
        self.vocab_size = int(sp.GetPieceSize())
        self.pad_id = int(sp.pad_id())
        self.eos_id = int(sp.eos_id())
        self.unk_id = int(sp.unk_id())
        self.bos_id = int(sp.bos_id())
        self.mask_id = self.vocab_size
        if self.eos_id < 0:
            raise DataError(
                f"SentencePiece model {source} has no EOS piece (eos_id={self.eos_id}); "
                "train it with eos_id set (e.g. eos_id=2) or let dllm_jax train one (data.tokenizer='')."
            )

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, b: bytes) -> "Tokenizer":
        return cls(b)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        return cls(_read_tokenizer_file(path), source=repr(path))

    def save(self, path: str) -> None:
        """Writes the model bytes atomically (a reader never sees half a file)."""
        _atomic_write(path, self.model_bytes)

    # -- encoding -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS or EOS added."""
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Encodes many texts at once with SentencePiece's threaded batch encoder."""
        texts = list(texts)
        if not texts:
            return []
        threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        return self._sp.Encode(texts, out_type=int, num_threads=threads)

    def decode(self, ids) -> str:
        """Text of ``ids``, dropping pad, mask and out-of-range ids (EOS decodes to nothing)."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = (arr >= 0) & (arr < self.vocab_size) & (arr != self.pad_id)
        return self._sp.DecodeIds([int(i) for i in arr[keep]])

    def id_to_piece(self, i: int) -> str:
        if i == self.mask_id:
            return "[MASK]"
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


# Special tokens that mark the end of a document, in the order they are looked for.
# GPT-2/NeoX/Qwen: <|endoftext|>; Llama 3: <|end_of_text|>; Llama 2/Mistral: </s>; Gemma: <eos>.
HF_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")
HF_PAD_CANDIDATES = ("<pad>", "<|padding|>", "[PAD]", "<|pad|>")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` model (the bytes of a ``tokenizer.json``).

    ``vocab_size`` counts added tokens too (``get_vocab_size(with_added_tokens=True)``), so
    every id the tokenizer can emit is < vocab_size; ``mask_id = vocab_size``. EOS is the
    first of ``HF_EOS_CANDIDATES`` present in the vocabulary (or ``eos_token``); pad is the
    first of ``HF_PAD_CANDIDATES`` present, else EOS. Encoding adds no special tokens
    (documents get EOS appended by the data pipeline, as with SentencePiece).

    Raises:
      DataError: the bytes are not a tokenizer.json, or it has no recognisable EOS token.
    """

    kind = "hf"
    filename = "tokenizer.json"

    def __init__(self, json_bytes: bytes, source: str = "<bytes>", eos_token: str | None = None):
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
        self.fingerprint = hashlib.sha256(self.model_bytes).hexdigest()[:16]
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(self.vocab_size, max(vocab.values(), default=-1) + 1)
        names = (eos_token,) if eos_token else HF_EOS_CANDIDATES
        eos = next((vocab[n] for n in names if n in vocab), None)
        if eos is None:
            raise DataError(
                f"Hugging Face tokenizer {source} has none of the end-of-text tokens {list(names)}; "
                "use a tokenizer with an EOS token (dllm_jax appends it to every document)."
            )
        self.eos_id = int(eos)
        pad = next((vocab[n] for n in HF_PAD_CANDIDATES if n in vocab), None)
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.unk_id = -1
        self.bos_id = -1
        self.mask_id = self.vocab_size

    @classmethod
    def from_bytes(cls, b: bytes) -> "HFTokenizer":
        return cls(b)

    @classmethod
    def load(cls, path: str) -> "HFTokenizer":
        return cls(_read_tokenizer_file(path), source=repr(path))

    def save(self, path: str) -> None:
        _atomic_write(path, self.model_bytes)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        texts = list(texts)
        if not texts:
            return []
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of ``ids``, dropping pad (when distinct from EOS), EOS, mask and out-of-range ids."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = (arr >= 0) & (arr < self.vocab_size) & (arr != self.pad_id) & (arr != self.eos_id)
        return self._tok.decode([int(i) for i in arr[keep]], skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        if i == self.mask_id:
            return "[MASK]"
        return self._tok.id_to_token(int(i)) or ""

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"


def _is_json(b: bytes) -> bool:
    return bytes(b[:64]).lstrip().startswith(b"{")


def tokenizer_from_bytes(b: bytes, source: str = "<bytes>"):
    """A ``Tokenizer`` (SentencePiece proto) or ``HFTokenizer`` (tokenizer.json), by content."""
    return HFTokenizer(b, source=source) if _is_json(b) else Tokenizer(b, source=source)


def load_tokenizer(path: str):
    """Loads a SentencePiece ``.model`` or a Hugging Face ``tokenizer.json`` (decided by content).

    A directory is accepted too: its ``tokenizer.json`` (a Hugging Face model directory) or
    ``tokenizer.model``.

    Raises:
      DataError: the path does not exist or is not a tokenizer of either kind.
    """
    if paths.isdir(path):
        for name in (HFTokenizer.filename, Tokenizer.filename):
            if paths.isfile(paths.join(paths.expand(path), name)):
                return load_tokenizer(paths.join(paths.expand(path), name))
        raise DataError(f"tokenizer directory {path!r} has neither tokenizer.json nor tokenizer.model; point data.tokenizer at a tokenizer file.")
    return tokenizer_from_bytes(_read_tokenizer_file(path), source=repr(path))


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
