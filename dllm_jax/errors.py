"""User-facing errors. Each message names the bad value and how to fix it."""


class DllmError(Exception):
    """Base class for errors caused by user input (config, data, workdir)."""


class ConfigError(DllmError, ValueError):
    """A config key or value is wrong."""


class DataError(DllmError, ValueError):
    """A corpus, tokenizer or data budget is wrong."""


class CheckpointError(DllmError, RuntimeError):
    """A workdir or checkpoint cannot be used as asked."""


class TrainingDivergedError(DllmError, RuntimeError):
    """The loss became NaN or infinite."""
