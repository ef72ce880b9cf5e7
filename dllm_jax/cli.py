"""`dllm-jax VERB ...` (also `python -m dllm_jax VERB ...`).

Each verb lives in its own module exposing `add_arguments(parser)` and `run(args)`; the
table below maps verbs to modules, imported only when used. A verb module may also set
`PASSES_UNKNOWN_ARGS = True` (options for another program, e.g. Beam) and `TEXT_ARGUMENTS`,
the argparse names of its free-text arguments (prompts, infill templates: what reaches a
tokenizer), which must be valid UTF-8 (`check_text_arguments`).

Decisions on how the program ends (issue 25):
- Bad input (a `DllmError`, or an `OSError` the machine raised for a path) ends with ONE
  `dllm-jax VERB: error: ...` line on stderr, exit status 2, nothing after it. The code that
  opened writers, checkpoint managers and loaders closes them when an error passes through
  (e.g. `train` closes TensorBoard, the Orbax manager and the Grain iterator), so their
  background threads are finished before the line is printed. As the program (`main()` with
  no argv: the `dllm-jax` script, `python -m dllm_jax`), once that line is out stderr is
  pointed at /dev/null, so nothing a library's exit handler or a leftover thread prints at
  interpreter shutdown can follow it.
- As the program, libraries' own log records (Orbax, absl, Grain, JAX) are shown as one
  line each, without their tracebacks; exceptions that Python can only report as ignored
  (`sys.unraisablehook`, e.g. tensorstore callbacks into a closed event loop after a
  failed read) are logged at DEBUG, and exceptions in background threads as one ERROR
  line. Errors of this program itself (not DllmError/OSError: a bug) keep their traceback.
- As the program, JAX is kept on the CPU when there is no accelerator and the user did
  not choose (`distributed.prefer_cpu_without_accelerator`): with libtpu installed JAX
  would otherwise load it, and libtpu prints TPU initialisation errors on every command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading

from dllm_jax.errors import ConfigError, DllmError

VERBS = {
    "train": ("dllm_jax.cli_train", "train (or resume) an experiment config in a workdir"),
    "config": ("dllm_jax.cli_train", "print the resolved config of an experiment file"),
    "sample": ("dllm_jax.sampling.cli", "generate text from a trained run (AR or MDM)"),
    "eval": ("dllm_jax.evaluation.cli", "evaluate a trained run (likelihoods, multiple choice, cloze, genppl)"),
    "sweep": ("dllm_jax.study.sweep", "run every point of an experiment grid"),
    "report": ("dllm_jax.study.report", "crossover plots, tables and scaling-law fits of a sweep"),
    "export": ("dllm_jax.hf.cli", "write a trained run as a Hugging Face (transformers) checkpoint"),
    "import": ("dllm_jax.hf.cli", "turn a Hugging Face checkpoint into a step-0 run (then sample, eval or train it)"),
    "compile": ("dllm_jax.aot", "compile the train step for a TPU topology ahead of time and report memory"),
    "prepare": ("dllm_jax.cli_prepare", "tokenise a corpus once into a token store (an Apache Beam pipeline)"),
}


class _OneLineFormatter(logging.Formatter):
    """Records of other libraries (absl, Orbax, Grain, JAX) as one line: their traceback is
    reduced to `Type: first line of the message` (dllm_jax's own records keep theirs)."""

    def format(self, record):
        if record.exc_info and not record.name.startswith("dllm_jax"):
            kind, error = record.exc_info[0], record.exc_info[1]
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
            first = (str(error).strip().splitlines() or [""])[0]
            message = record.getMessage()
            record.msg = message if first and first in message else f"{message} ({getattr(kind, '__name__', kind)}: {first[:300]})"
            record.args = None
        return super().format(record)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(program: bool = False):
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    logging.getLogger("dllm_jax").setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not program:
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_OneLineFormatter(LOG_FORMAT))
    log = logging.getLogger("dllm_jax")

    def unraisable(u):  # e.g. tensorstore completing a read into an event loop already closed
        log.debug("ignored %s in a %s: %s", getattr(u.exc_type, "__name__", u.exc_type), type(u.object).__name__, u.exc_value)

    def thread_failed(a):
        if a.exc_type is SystemExit:
            return
        first = str(a.exc_value).strip().splitlines()
        log.error("background thread %s failed: %s: %s", getattr(a.thread, "name", "?"), a.exc_type.__name__,
                  first[0][:300] if first else "")

    sys.unraisablehook = unraisable
    threading.excepthook = thread_failed


TEXT_NAMES = ("prompt", "infill")  # free text (not a path) among the arguments checked


def check_text_arguments(args, names) -> None:
    """ConfigError for the first argument in `names` (argparse dests) whose text is not valid
    UTF-8. Python decodes the command line with surrogateescape, so bytes that are not UTF-8
    (e.g. `$'caf\\xe9'` from a Latin-1 terminal) arrive as lone surrogates, which the
    tokenizers cannot encode."""
    from dllm_jax.files import not_utf8

    for name in names:
        values = getattr(args, name, None)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if not isinstance(value, str):
                continue
            where = not_utf8(value)
            if where is not None:
                raise ConfigError(
                    f"--{name.replace('_', '-')} is not valid UTF-8 ({where}): the text "
                    "was written in another encoding (e.g. Latin-1). Pass it as UTF-8: convert it with "
                    "`iconv -f latin1 -t utf-8`, or use a UTF-8 terminal/locale"
                    + ("" if name in TEXT_NAMES else "; a file or folder whose name is not UTF-8 must be renamed "
                       "(e.g. `convmv -f latin1 -t utf8 --notest NAME`)")
                )


def _quiet_exit(rc: int) -> int:
    """As the program, after the error line: flush, then send stderr to /dev/null so that
    nothing printed at interpreter shutdown (exit handlers, leftover threads) follows it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream: nothing more to say on it
            pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
    return rc


def main(argv: list[str] | None = None) -> int:
    """Run `dllm-jax ARGV`; returns the exit status (0, or 2 after one `error:` line).
    With argv None this is the program itself (the console script, `python -m dllm_jax`):
    it then also sets up the process as the module doc says (one-line library logs, the
    CPU when there is no accelerator, a quiet shutdown after an error)."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging(program)
    parser = argparse.ArgumentParser(prog="dllm-jax", description="Pretrain, sample and evaluate AR and masked-diffusion LMs in JAX.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    available, passthrough, text_args = {}, {}, {}
    for verb, (module_name, help_text) in VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
                continue  # verb not part of this installation
            raise
        p = sub.add_parser(verb, help=help_text, description=help_text)
        getattr(module, f"add_{verb}_arguments", getattr(module, "add_arguments", lambda _: None))(p)
        available[verb] = getattr(module, f"run_{verb}", getattr(module, "run", None))
        passthrough[verb] = getattr(module, "PASSES_UNKNOWN_ARGS", False)  # e.g. Beam pipeline options
        text_args[verb] = getattr(module, "TEXT_ARGUMENTS", ())
    if not argv:
        parser.print_help()
        return 2
    # `--config.KEY=VALUE` overrides pass through untouched for the verbs that take a config
    from dllm_jax.config import parse_overrides

    try:
        overrides, rest = parse_overrides(argv)
        args, unknown = parser.parse_known_args(rest)
        args.overrides = overrides
        if args.verb is None:
            parser.print_help()
            return 2
        if unknown and not passthrough[args.verb]:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.unknown = unknown
        check_text_arguments(args, text_args[args.verb])
        # every other string argument too (paths: --workdir, --output, --root, --data, ...): JAX,
        # Orbax and tensorstore cannot take a name that is not UTF-8, and would fail late
        check_text_arguments(args, [k for k, v in sorted(vars(args).items()) if k not in ("overrides", "unknown", "verb")
                                    and (isinstance(v, str) or isinstance(v, (list, tuple)) and any(isinstance(x, str) for x in v))])
        if program:
            from dllm_jax.distributed import prefer_cpu_without_accelerator

            prefer_cpu_without_accelerator()  # before any verb touches devices
        return int(available[args.verb](args) or 0)
    except DllmError as e:
        message = str(e)
    except OSError as e:  # the machine refused a path: read-only, full, not a directory, permissions
        what = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        message = (f"cannot use{what}: {e.strerror or e}; check that the path exists, is writable "
                   "and has room (nothing already saved was removed)")
    print(f"dllm-jax {argv[0]}: error: {message}", file=sys.stderr)
    return _quiet_exit(2) if program else 2


if __name__ == "__main__":
    sys.exit(main())
