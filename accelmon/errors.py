"""Errors that are the user's to fix: the CLI prints them as one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, unreachable endpoint, wrong password).

    The message must be one line, name the file/field/host concerned, and never contain a
    credential. ``exit_code`` is what the CLI exits with.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
