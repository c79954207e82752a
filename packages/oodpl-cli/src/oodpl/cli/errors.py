"""Errors the command line reports as one clear line.

Every failure a user can cause (a missing file, an unknown config key, a bad value) is
raised as a :class:`CLIError` or one of its subclasses. ``oodpl``'s entry point catches it,
prints exactly one line, ``error: <message>``, to stderr and exits non-zero; the traceback
appears only with ``oodpl --debug``. Exceptions that are not ``CLIError`` (bugs, or errors
raised deeper in the library) get the same one-line treatment, prefixed with their type name.

Exit codes: 1 for a failed command, 2 for bad input (usage, config, paths), 130 when interrupted.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def one_line(message: str) -> str:
    """Collapse a (possibly multi-line) message into one line: lines joined with ``"; "``."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return "; ".join(parts)


class CLIError(Exception):
    """A failure the user can act on; its message is printed as one line without a traceback.

    Args:
        message: what went wrong, naming the file / argument / field involved.
        hint: optional next step appended to the line (``"...; hint"``).
        exit_code: the process exit status (default 1).
    """

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def format_line(self) -> str:
        """The single line printed after ``error: ``."""
        text = one_line(self.message)
        if self.hint:
            text = f"{text} ({one_line(self.hint)})"
        return text

    def __str__(self) -> str:
        return self.format_line()


class BadInputError(CLIError, ValueError):
    """Bad input from the user (file, argument, value); exit status 2."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError):
    """An invalid run configuration.

    Args:
        message: what is wrong.
        source: the config file (or ``--set``) the problem comes from, if known.
        key: the full dotted key, e.g. ``"train.lr"``, if the problem is one field.
        line: the 1-based line number in ``source``, if known.
        hint: e.g. ``"did you mean 'train.lr'?"``.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ):
        self.source = source
        self.key = key
        self.line = line
        location = ""
        if source:
            location = f"{source}:{line}: " if line else f"{source}: "
        super().__init__(f"{location}{message}", hint=hint)


class PathNotFoundError(BadInputError, FileNotFoundError):
    """A file or directory the user named does not exist."""

    def __init__(self, path: object, what: str = "path"):
        super().__init__(f"{what} does not exist: {path}")
        self.path = path
