"""The one error family of the core library.

Every expected failure raises a subclass of :class:`PeftArenaError` with a one-line message
(what went wrong) and a hint (what to do). The CLI renders them in one place
(:func:`peftarena_cli.cli.app.main`) as ``error: <message>`` plus ``hint: <hint>`` and exits 1.
"""

from __future__ import annotations


class PeftArenaError(Exception):
    """Base class of every expected error. ``hint`` tells the user what to do."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:  # one line, always
        return self.message


class UsageError(PeftArenaError):
    """Arguments that cannot work together (exit code 2, like click's usage errors)."""

    exit_code = 2
    default_hint = "see --help for the accepted values"


class InputNotFound(PeftArenaError):
    default_hint = "check the path, or run `peftarena models list` for aliases"


class InvalidArtifact(PeftArenaError):
    """A file exists but is not what the command needs (corrupt, wrong format, wrong schema)."""

    default_hint = "pass a file written by peftarena or in the documented format (docs/artifacts.md)"


class ModelNotAvailable(PeftArenaError):
    default_hint = "run `peftarena models list` to see the known aliases"


class AdapterError(PeftArenaError):
    default_hint = "pass a PEFT adapter directory or a safetensors file written by peftarena"


class IncompatibleInputs(PeftArenaError):
    """Base and adapter (or two artifacts) that do not fit together."""

    default_hint = "check that the adapter was trained on this base model"


class UnsupportedMethod(PeftArenaError):
    default_hint = "see `docs/methods.md` for the supported PEFT types"


class NumericalError(PeftArenaError):
    default_hint = "the weights contain NaN or Inf; check the checkpoint"


class OutputError(PeftArenaError):
    default_hint = "create the directory first or choose another output path"


class DataError(PeftArenaError):
    default_hint = "check the dataset file's format and columns (docs/tasks.md)"


class MissingDependency(PeftArenaError):
    default_hint = "install the missing package"


class DeviceNotAvailable(PeftArenaError):
    """A device that was asked for is not there (e.g. --device cuda without CUDA)."""

    default_hint = "pass --device cpu (or auto: CUDA when present)"


class ProcessGroupError(PeftArenaError):
    """A data-parallel run (torchrun) whose ranks cannot work together, e.g. one of them died."""

    default_hint = "see the failing rank's own error above; nothing was written, rerun when it is fixed"


class ServerError(PeftArenaError):
    """A served model (``--backend openai``) that cannot be reached or answers wrongly."""

    default_hint = "check that the server is up at --base-url and serves --served-model; nothing was written"
