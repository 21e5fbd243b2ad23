"""User-facing error families. cli.py catches SweError once and prints one red line plus a hint."""

from __future__ import annotations


class SweError(Exception):
    """Base of every error a user can cause; carries a one-line message and a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class WorkspaceError(SweError):
    """A workspace is missing, incomplete, corrupted or bound to another model."""


class UnsupportedArchitecture(SweError):
    """The model's family has no adapter."""


class CheckpointError(SweError):
    """A checkpoint file is missing, unreadable or inconsistent."""


class PromptError(SweError):
    """A prompt set cannot be read or does not hold what was asked for."""


class RecipeError(SweError):
    """A recipe file or override is invalid."""


class SolveError(SweError):
    """The edit cannot be computed from the data in the workspace."""


class EditError(SweError):
    """An edit artifact is invalid or does not match its base model."""


class HubError(SweError):
    """Talking to the Hugging Face Hub failed (token, repo, network)."""


class EvalError(SweError):
    """Evaluation cannot run (judge cannot load, bad inputs)."""


class LoraError(SweError):
    """An edit cannot be exported as a LoRA adapter, or an adapter cannot be read or loaded."""


class BusyError(SweError):
    """Another swe process holds the lock of a workspace or an output."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that knows what it keeps and how to resume: the message says so."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
