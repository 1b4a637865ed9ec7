"""Shared helpers of the absl entry points: one-line errors with exit status 2.

Every `python -m experiments.*` entry point ends with `cli.run(main)` (not
`app.run(main)`): a bad flag, an unknown `--config.*` field, a bad config
value or an expected error of the run prints one line `error: ...` on stderr
and exits with status 2, with no traceback.

An entry point with an ml_collections config defines it with
`cli.define_config(...)`. Its `aliases` are short forms of config fields:
`--dataset=dtd` is rewritten to `--config.dataset=dtd` before any flag is
parsed, so the short form IS the config field (one default, in the config
file; one name from flag to function). Giving both forms is refused.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

# Set by `define_config`: the argv every parser of this process reads (the
# aliases rewritten), and an error raised while defining the config flag
# (ml_collections parses the default config and its overrides right there).
_ARGV: list[str] | None = None
_DEFINE_ERROR: list[str] = []


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _first_line(err: BaseException) -> str:
    """The message of `err` as one line (the last non-empty line for a chain)."""
    msg = str(err.args[0]) if err.args else repr(err)
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else (lines[-1] if lines else repr(err))


def one_line_errors(main):
    """Wraps an absl `main` so expected errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except (ValueError, FileNotFoundError, KeyError, app.UsageError) as err:
            _fail(err.args[0] if err.args else repr(err))
        except RuntimeError as err:
            from nat_jax.train import training  # the NaN guard's error: one line too

            if not isinstance(err, training.NonFiniteError):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return wrapped


def rewrite_aliases(argv: Sequence[str], aliases: Sequence[str],
                    config: str = "config") -> list[str]:
    """`--NAME=V` / `--NAME V` -> `--config.NAME=V` for NAME in `aliases`.

    The rewritten overrides go after every other flag (ml_collections wants
    overrides after `--config=FILE`), before a `--` separator if any.

    Raises:
      ValueError: an alias and its `--config.NAME` are both given.
    """
    argv = list(argv)
    head, rest = argv[:1], argv[1:]
    stop = rest.index("--") if "--" in rest else len(rest)
    rest, tail = rest[:stop], rest[stop:]
    kept, moved, i = [], [], 0
    while i < len(rest):
        arg = rest[i]
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in aliases:
            if not eq:
                if i + 1 >= len(rest):
                    raise ValueError(f"Flag --{name} needs a value.")
                value, i = rest[i + 1], i + 1
            moved.append((name, value))
        else:
            kept.append(arg)
        i += 1
    for name, _ in moved:
        long = f"{config}.{name}"
        if any(a.lstrip("-").partition("=")[0] == long for a in kept):
            raise ValueError(f"Give --{name} or --{long}, not both (they are the "
                             f"same field).")
    return head + kept + [f"--{config}.{n}={v}" for n, v in moved] + tail


def define_config(default: str, help_string: str, aliases: Sequence[str] = ()
                  ) -> flags.FlagHolder | None:
    """`config_flags.DEFINE_config_file("config", ...)` with deferred errors.

    Args:
      default: "path/to/config.py:variant".
      help_string: the flag's help.
      aliases: config fields that may also be given as `--NAME=VALUE`.

    Returns:
      The flag holder, or None when defining it failed (an unknown
      `--config.*` field, say); `run` then prints that error in one line.
    """
    global _ARGV
    try:
        _ARGV = rewrite_aliases(sys.argv, aliases)
        return config_flags.DEFINE_config_file(
            "config", default, help_string, lock_config=True, sys_argv=_ARGV)
    except Exception as err:  # noqa: BLE001 - reported by run() in one line
        _DEFINE_ERROR.append(_config_error(err))
        return None


def _config_error(err: BaseException) -> str:
    if isinstance(err, (KeyError, AttributeError)):
        name = str(err).strip("\"'")
        given = [a.lstrip("-").partition("=")[0] for a in (_ARGV or sys.argv)[1:]]
        given = [g for g in given if g.startswith("config.")
                 and name in g.split(".")[1:]]
        field = given[0] if given else f"config.{name}"
        return (f"Unknown config field --{field}; every field and its default is "
                f"in the --config file (experiments/configs/).")
    return _first_line(err)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one `error:` line (exit 2) for any bad flag."""
    if _DEFINE_ERROR:
        _fail(_DEFINE_ERROR[0])
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        _fail(f"{_first_line(err)} (see --helpfull).")
    except (KeyError, AttributeError) as err:
        _fail(_config_error(err))
    except (ValueError, TypeError, OSError) as err:
        _fail(_first_line(err))
    raise AssertionError("unreachable")


def run(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)` with one-line flag errors (and `main` wrapped likewise)."""
    argv = _ARGV if _ARGV is not None else sys.argv
    app.run(one_line_errors(main), argv=argv, flags_parser=_parse_flags)


def quiet_library_logs() -> None:
    """Keeps the run's own progress lines readable: orbax's INFO records go
    (`nat_jax.runtime.checkpoint.DropOrbaxInfo`), its warnings stay."""
    from nat_jax.runtime import checkpoint  # after flag parsing: keeps --help fast

    drop = checkpoint.DropOrbaxInfo()
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(drop)
