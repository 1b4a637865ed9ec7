"""Shared helpers of the absl entry points: one-line errors with exit status 2."""

from __future__ import annotations

import functools
import logging
import sys

from absl import app


def one_line_errors(main):
    """Wraps an absl `main` so expected errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except (ValueError, FileNotFoundError, KeyError, app.UsageError) as err:
            msg = err.args[0] if err.args else repr(err)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapped


class _DropLibraryInfo(logging.Filter):
    """Drops INFO records logged from inside orbax (dozens per checkpoint)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_library_logs() -> None:
    """Keeps the run's own progress lines readable."""
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_DropLibraryInfo())
