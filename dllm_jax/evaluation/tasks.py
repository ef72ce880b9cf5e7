"""Multiple-choice task files: a generic JSONL format plus HellaSwag and MMLU readers.

Generic JSONL (one object per line, blank lines skipped):

    {"context": "The cat sat on the", "choices": [" mat.", " moon."], "label": 0}

`context` is a string (may be empty), `choices` a list of at least two non-empty strings,
`label` the index of the right one. A choice is scored as the continuation of the context
exactly as written, so put the separating space in the choice (as above), the way
lm-evaluation-harness does.

HellaSwag: the released `hellaswag_{train,val}.jsonl` files (fields activity_label, ctx_a,
ctx_b, endings, label). Context "activity_label: ctx_a Ctx_b", choices " " + ending, with
the usual clean-up of WikiHow markup ("[title]" -> ". ", other "[...]" removed, double
spaces collapsed). Scored with acc_norm.

MMLU: the original CSV files (no header; question, A, B, C, D, answer letter; one file per
subject named `<subject>_<split>.csv`), a directory of them, or JSONL with
{"question", "choices": [4 strings], "answer": index or letter[, "subject"]}. Zero-shot
prompt "The following are multiple choice questions (with answers) about <subject>.\\n\\n
<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", choices " A".." D" (scored by the letter).

Every reader raises `DataError` naming the file and line of a bad record. Files are read
through `dllm_jax.files`: gzip / bzip2 / xz (e.g. `hellaswag_val.jsonl.gz`) directly, a UTF-8
byte-order mark dropped, any encoding other than UTF-8 (latin-1, UTF-16) a `DataError` naming
the file, the line and the iconv command that converts it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re

from dllm_jax import files, paths
from dllm_jax.errors import DataError

FORMATS = ("jsonl", "hellaswag", "mmlu")
LETTERS = "ABCD"


@dataclasses.dataclass
class Item:
    """One multiple-choice question in text form."""

    context: str
    choices: list[str]
    label: int
    source: str = ""  # "file:line", for messages


@dataclasses.dataclass
class TokenItem:
    """One multiple-choice question as token ids; what the scorer consumes."""

    context: list[int]
    choices: list[list[int]]
    label: int
    choice_chars: list[int]  # length of each choice in characters (for acc_norm)
    meta: dict = dataclasses.field(default_factory=dict)
    # characters of each token of each choice (its SentencePiece piece, '▁' = a space), so that
    # acc_norm can divide a choice cut to fit the context by the characters actually scored
    choice_token_chars: list[list[int]] = dataclasses.field(default_factory=list)
    # tokens after the choice (a two-sided cloze's right-hand text); empty for a continuation.
    # Items with a suffix are scored by log p(choice | context and suffix) (Scorer.blank_logprobs)
    suffix: list[int] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------- helpers
def _check_file(path: str) -> None:
    if not paths.isfile(path):
        raise DataError(f"task file {path!r} does not exist; pass an existing file with --data")


def _lines(path: str) -> list[str]:
    """The lines of a task file: UTF-8 (BOM dropped), gzip/bzip2/xz read directly; any other
    encoding is a DataError naming the file, the line and the fix (`dllm_jax.files`)."""
    _check_file(path)
    return files.read_text(path, "task file").split("\n")


def _json_lines(path: str):
    """(line number, object) for every non-blank line; bad JSON is an error naming the line."""
    from dllm_jax.data.formats import json_object

    for n, line in enumerate(_lines(path), 1):
        if line.strip():
            yield n, json_object(line, path, n)


def _label(value, n_choices: int, where: str, field: str = "label") -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n_choices] and len(value.strip()) == 1:
        value = LETTERS.index(value.strip().upper())
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: {field!r} is {value!r}; it must be the index (0..{n_choices - 1}) of the right choice")
    if not 0 <= value < n_choices:
        raise DataError(f"{where}: {field!r} is {value} but there are {n_choices} choices (valid: 0..{n_choices - 1})")
    return value


def _choices(value, where: str, field: str = "choices", n: int | None = None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: {field!r} must be a list of strings, got {value!r:.80}")
    if len(value) < 2 or (n is not None and len(value) != n):
        want = f"exactly {n}" if n is not None else "at least 2"
        raise DataError(f"{where}: {field!r} has {len(value)} entries; it needs {want}")
    for i, c in enumerate(value):
        if not c.strip():
            raise DataError(f"{where}: choice {i} is empty; every choice needs some text")
    return value


# ---------------------------------------------------------------- generic JSONL
def read_jsonl(path: str) -> list[Item]:
    items = []
    for n, obj in _json_lines(path):
        where = f"{path}:{n}"
        missing = [k for k in ("context", "choices", "label") if k not in obj]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}; each line needs 'context', 'choices' and 'label'")
        if not isinstance(obj["context"], str):
            raise DataError(f"{where}: 'context' must be a string, got {type(obj['context']).__name__}")
        choices = _choices(obj["choices"], where)
        items.append(Item(obj["context"], choices, _label(obj["label"], len(choices), where), where))
    if not items:
        raise DataError(f"task file {path!r} has no records")
    return items


# ---------------------------------------------------------------- HellaSwag
def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def read_hellaswag(path: str) -> list[Item]:
    items = []
    for n, obj in _json_lines(path):
        where = f"{path}:{n}"
        missing = [k for k in ("ctx_a", "ctx_b", "endings", "label") if k not in obj]
        if missing:
            raise DataError(f"{where}: missing HellaSwag field(s) {missing}; is this a hellaswag_*.jsonl file? (use --format jsonl for the generic format)")
        ctx = obj["ctx_a"] + " " + obj["ctx_b"].capitalize()
        context = _hellaswag_clean(obj.get("activity_label", "") + ": " + ctx)
        endings = _choices(obj["endings"], where, "endings")
        label = obj["label"]
        if label == "" or label is None:
            raise DataError(f"{where}: 'label' is empty (the HellaSwag test split has no labels); use the val split")
        items.append(Item(context, [" " + _hellaswag_clean(e) for e in endings], _label(label, len(endings), where), where))
    if not items:
        raise DataError(f"task file {path!r} has no records")
    return items


# ---------------------------------------------------------------- MMLU
def _mmlu_subject(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path[:-3] if path.endswith(".gz") else path))[0]
    for split in ("_test", "_val", "_dev", "_auxiliary_train"):
        if stem.endswith(split):
            stem = stem[: -len(split)]
    return stem.replace("_", " ")


def _mmlu_item(subject: str, question: str, choices: list[str], label: int, where: str) -> Item:
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""
    body = question.strip() + "\n" + "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(choices)) + "Answer:"
    return Item(head + body, [f" {LETTERS[i]}" for i in range(len(choices))], label, where)


def _read_mmlu_csv(path: str) -> list[Item]:
    subject = _mmlu_subject(path)
    items = []
    reader = csv.reader(io.StringIO("\n".join(_lines(path)), newline=""))  # decoded and checked up front
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 6:
            raise DataError(f"{where}: expected 6 CSV columns (question, A, B, C, D, answer letter), got {len(row)}")
        choices = _choices(row[1:5], where, "choices A-D", 4)
        answer = row[5].strip().upper()
        if answer not in LETTERS:
            raise DataError(f"{where}: answer is {row[5]!r}; it must be one of A, B, C, D")
        items.append(_mmlu_item(subject, row[0], choices, LETTERS.index(answer), where))
    return items


def _read_mmlu_jsonl(path: str) -> list[Item]:
    items = []
    for n, obj in _json_lines(path):
        where = f"{path}:{n}"
        missing = [k for k in ("question", "choices", "answer") if k not in obj]
        if missing:
            raise DataError(f"{where}: missing MMLU field(s) {missing}; each line needs 'question', 'choices' and 'answer'")
        choices = _choices(obj["choices"], where, n=4)
        subject = str(obj.get("subject", "")).replace("_", " ")
        items.append(_mmlu_item(subject, str(obj["question"]), choices, _label(obj["answer"], 4, where, "answer"), where))
    return items


def read_mmlu(path: str) -> list[Item]:
    """A CSV file, a JSONL file, or a directory of `*.csv` subject files."""
    if paths.isdir(path):
        found = sorted(paths.glob(paths.join(path, "*.csv")) + paths.glob(paths.join(path, "*.csv.gz")))
        if not found:
            raise DataError(f"MMLU directory {path!r} has no *.csv files; point --data at a folder of <subject>_test.csv files")
        items = [it for f in found for it in _read_mmlu_csv(f)]
    elif path.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        items = _read_mmlu_jsonl(path)
    else:
        items = _read_mmlu_csv(path)
    if not items:
        raise DataError(f"MMLU data {path!r} has no records")
    return items


def read_task(path: str, fmt: str) -> list[Item]:
    readers = {"jsonl": read_jsonl, "hellaswag": read_hellaswag, "mmlu": read_mmlu}
    if fmt not in readers:
        raise DataError(f"task format {fmt!r} is not one of {list(FORMATS)}")
    return readers[fmt](path)


# ---------------------------------------------------------------- tokenisation
def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as the model would see the joined text: spaces
    at the end of the context move to the continuation, the joined text is encoded once and
    split where the context's own encoding ends (if the joined encoding does not start with
    it, the two parts are encoded separately)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = tokenizer.encode(context) if context else []
    whole = tokenizer.encode(context + continuation)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tokenizer.encode(continuation)


def token_chars(tokenizer, ids) -> list[int]:
    """Characters of the text each token stands for (byte-fallback pieces count 1 each)."""
    out = []
    for i in ids:
        piece = tokenizer.id_to_piece(i)
        out.append(1 if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece) else len(piece.replace("\u2581", " ")))
    return out


def tokenize_items(items: list[Item], tokenizer) -> list[TokenItem]:
    out = []
    for it in items:
        pairs = [encode_pair(tokenizer, it.context, c) for c in it.choices]
        for i, (_, ids) in enumerate(pairs):
            if not ids:
                raise DataError(f"{it.source or 'item'}: choice {i} ({it.choices[i]!r}) encodes to no tokens")
        # the context's encoding does not depend on the choice
        out.append(TokenItem(context=pairs[0][0], choices=[p[1] for p in pairs], label=it.label,
                             choice_chars=[len(c) for c in it.choices], meta={"source": it.source},
                             choice_token_chars=[token_chars(tokenizer, p[1]) for p in pairs]))
    return out


__all__ = ["Item", "TokenItem", "FORMATS", "read_jsonl", "read_hellaswag", "read_mmlu", "read_task", "encode_pair", "tokenize_items"]
