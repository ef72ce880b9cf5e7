"""A `tokenizer.json` (Hugging Face `tokenizers`) equivalent to a SentencePiece model, built
without protobuf and without transformers' converter.

The model's settings are read from its serialized proto with a small wire-format reader
(`read_spm_model`; field numbers from sentencepiece's `sentencepiece_model.proto`), so the
`protobuf` package is not needed (transformers' converter and sentencepiece's own
`sentencepiece_model_pb2` both need protobuf >= 7, which apache-beam's pin rules out).

`spm_tokenizer_json` converts models with the text handling of dllm_jax's trainer
(`dllm_jax.data.tokenizer.train_tokenizer`): unigram or BPE, identity normalisation, no
dummy prefix, whitespace kept as is (spaces are SentencePiece's '▁'), byte fallback, user
symbols such as '\\n' and '\\t'. Other models: (None, the reason).

- Spaces: instead of a normalizer that turns ' ' into '▁' (which would also turn a literal
  '▁' in text into a space), every normal piece is relabelled with ' ' for '▁' and the text
  reaches the model unchanged. A literal '▁' is then in no piece, so it falls back to its
  three UTF-8 byte pieces, which is what dllm_jax's tokenizer does with it
  (`Tokenizer._init_text_handling`), and no piece spans it, as in ours.
- Unigram: `tokenizers.models.Unigram` with the pieces' scores runs SentencePiece's Viterbi
  segmentation over the whole text (no pre-tokenizer) with the same unknown-piece score
  (lowest score - 10) and byte fallback. One difference remains: where two segmentations
  have exactly the same score (the same pieces in another order, e.g. a whitespace run as
  '▁' + '▁▁▁▁' or '▁▁▁▁' + '▁'), SentencePiece's choice follows the float32 rounding of its
  running path score, which depends on the text before; `tokenizers` sums the same float32
  scores exactly in float64 and keeps the earliest-starting last piece. No `tokenizers`
  model reproduces float32 rounding; both results decode to the same text with the same
  score (measured rates in docs/huggingface.md).
- BPE: SentencePiece merges, at each step, the adjacent pair whose concatenation is the
  highest-scoring piece (leftmost on ties); the merges here are every split of every normal
  piece into two normal pieces, ranked by the merged piece's score (as transformers'
  converter does), and `tokenizers` applies them by rank. Byte, control and unknown pieces
  are in no merge, so they are reached only by byte fallback / added tokens, as in
  SentencePiece. Measured identical on every text tried (docs/huggingface.md); the export
  checks probe texts all the same.
- User-defined pieces ('\\n', '\\t') are added tokens (matched before the model, as
  SentencePiece's prefix matcher does); control and unknown pieces are special added tokens,
  so a literal '</s>' in text maps to its id as transformers' tokenizers do by default
  (dllm_jax's `encode(..., split_special_tokens=False)`).

Also different: a literal byte-piece name such as '<0x41>' in text is a piece of the unigram
vocabulary for `tokenizers` (its trie holds every piece), which SentencePiece never matches
in text.
"""

from __future__ import annotations

import struct

SPACE = "\u2581"
# SentencePiece piece types (ModelProto.SentencePiece.Type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of a serialized protobuf message: ints for varints, bytes for
    length-delimited and fixed-width fields."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf message")
        yield number, value


def read_spm_model(model_bytes: bytes) -> dict:
    """The parts of a SentencePiece ModelProto that decide how it encodes:
    {'pieces': [(piece, score, type)], 'model_type', 'byte_fallback', 'treat_whitespace_as_suffix',
    'normalizer': {'name', 'charsmap', 'rules', 'add_dummy_prefix', 'remove_extra_whitespaces',
    'escape_whitespaces'}, 'denormalizer'} (proto defaults where a field is absent).
    Raises ValueError when the bytes are not a well-formed message."""
    pieces, trainer, normalizer, denormalizer = [], b"", None, None
    for number, value in _fields(bytes(model_bytes)):
        if number == 1:
            piece, score, kind = "", 0.0, NORMAL
            for n, v in _fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = v
            pieces.append((piece, score, kind))
        elif number == 2:
            trainer = value
        elif number == 3:
            normalizer = value
        elif number == 5:
            denormalizer = value

    def norm_spec(buf):
        spec = {"name": "", "charsmap": b"", "rules": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
                "escape_whitespaces": True}
        for n, v in _fields(buf or b""):
            key = {1: "name", 2: "charsmap", 3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces",
                   6: "rules"}.get(n)
            if key == "name":
                v = v.decode("utf-8")
            elif key in ("add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces"):
                v = bool(v)
            if key:
                spec[key] = v
        return spec

    out = {"pieces": pieces, "model_type": UNIGRAM, "byte_fallback": False, "treat_whitespace_as_suffix": False,
           "normalizer": norm_spec(normalizer), "denormalizer": None if denormalizer is None else norm_spec(denormalizer)}
    for n, v in _fields(trainer):
        if n == 3:
            out["model_type"] = v
        elif n == 35:
            out["byte_fallback"] = bool(v)
        elif n == 24:
            out["treat_whitespace_as_suffix"] = bool(v)
    return out


def _unsupported(m: dict) -> str | None:
    """Why the model's text handling is not the one `spm_tokenizer_json` reproduces (None: it is)."""
    norm = m["normalizer"]
    if m["model_type"] not in (UNIGRAM, BPE):
        return f"model type {m['model_type']} (only unigram = 1 and BPE = 2 are converted)"
    if norm["name"] not in ("identity", "") or norm["charsmap"] or norm["rules"]:
        return f"normalization rule {norm['name']!r} (only 'identity' is converted)"
    if norm["add_dummy_prefix"] or norm["remove_extra_whitespaces"] or not norm["escape_whitespaces"]:
        return "add_dummy_prefix / remove_extra_whitespaces / escape_whitespaces differ from dllm_jax's trainer"
    den = m["denormalizer"]
    if den is not None and (den["charsmap"] or den["rules"] or den["name"] not in ("identity", "")):
        return "a denormalizer"
    if m["treat_whitespace_as_suffix"]:
        return "treat_whitespace_as_suffix"
    kinds = [k for _, _, k in m["pieces"]]
    if not m["byte_fallback"] or kinds.count(BYTE) != 256:
        return "no byte fallback"
    if UNUSED in kinds:
        return "unused pieces"
    if kinds.count(UNKNOWN) != 1:
        return "no unknown piece"
    names = [p.replace(SPACE, " ") if k in (NORMAL, USER_DEFINED) else p for p, _, k in m["pieces"]]
    if len(set(names)) != len(names) or any(" " in p for p, _, k in m["pieces"] if k not in (NORMAL, USER_DEFINED)):
        return "pieces that collide once '▁' is written as a space"
    return None


def spm_tokenizer_json(model_bytes: bytes) -> tuple[str | None, str]:
    """(tokenizer.json text, '') for a SentencePiece model with dllm_jax's text handling (module
    docstring), or (None, reason) for one it does not reproduce. Needs the `tokenizers` package
    (ImportError otherwise); not protobuf, sentencepiece or transformers."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    try:
        m = read_spm_model(model_bytes)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
        return None, f"not a readable SentencePiece model ({e})"
    why = _unsupported(m)
    if why:
        return None, why
    pieces = m["pieces"]
    text_like = (NORMAL, USER_DEFINED)
    names = [p.replace(SPACE, " ") if k in text_like else p for p, _, k in pieces]
    unk_id = next(i for i, (_, _, k) in enumerate(pieces) if k == UNKNOWN)
    if m["model_type"] == UNIGRAM:
        model = models.Unigram([(name, float(s)) for name, (_, s, _) in zip(names, pieces)], unk_id, True)
    else:
        normal = {names[i]: s for i, (_, s, k) in enumerate(pieces) if k == NORMAL}
        merges = []
        for i, (_, score, kind) in enumerate(pieces):
            if kind != NORMAL:
                continue
            name = names[i]
            for cut in range(1, len(name)):
                left, right = name[:cut], name[cut:]
                if left in normal and right in normal:
                    merges.append((-score, i, cut, left, right))
        merges.sort()
        model = models.BPE(vocab={name: i for i, name in enumerate(names)}, merges=[(a, b) for *_, a, b in merges],
                           unk_token=names[unk_id], byte_fallback=True, fuse_unk=False)
    tok = Tokenizer(model)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    user = [AddedToken(names[i], special=False, normalized=False) for i, (_, _, k) in enumerate(pieces) if k == USER_DEFINED]
    if user:
        tok.add_tokens(user)
    special = [AddedToken(names[i], special=True, normalized=False) for i, (_, _, k) in enumerate(pieces)
               if k in (CONTROL, UNKNOWN) and names[i]]
    if special:
        tok.add_special_tokens(special)
    return tok.to_str(), ""
