"""Domain errors raised by the core and the stores.

The HTTP layer maps each class to a status code in one table (`api/errors.py`);
the CLI prints them with the file and feature they name.
"""

from __future__ import annotations

from typing import Any


class WanggeError(Exception):
    """Base class: a message for people plus optional structured detail."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message, **self.detail}


class NotFound(WanggeError):
    """The thing asked for does not exist (or is outside the caller's reach)."""


class InvalidInput(WanggeError):
    """A parameter or body value is malformed or out of range."""


class InvalidGeometry(InvalidInput):
    """A geometry cannot be read or repaired, or has the wrong type."""


class CRSMismatch(InvalidInput):
    """Inputs that must share a coordinate reference system do not."""


class ImportRejected(InvalidInput):
    """A file was refused whole; `problems` lists each bad feature."""

    def __init__(self, message: str, *, path: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message, path=path, problems=problems)
        self.path = path
        self.problems = problems


class Forbidden(WanggeError):
    """The caller's role may not do this (a case step that belongs to someone else)."""


class Conflict(WanggeError):
    """The request clashes with the stored state (a duplicate code, an illegal step)."""


class InfeasiblePlan(WanggeError):
    """No plan satisfies the constraints; `reasons` says why, per community."""
