"""One behaviour for bad input in every command: one line naming the file or flag, exit 2.

Every command of the project builds its parser with :func:`make_parser` (argparse errors
become ``<prog>: error: <message> (see --help)``) and runs its ``main`` through
:func:`run_command`, which turns :class:`UsageError` (and the project's data / checkpoint
errors, which subclass it or are listed in ``extra``) into the same one-line message.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any


class UsageError(Exception):
    """Bad user input (a flag, a file): reported as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage wall), exit code 2."""

    def __init__(self, *args, error_prog: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog or self.prog

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.error_prog}: error: {message} (see --help)\n")


def make_parser(module: str, description: str, **kwargs) -> OneLineParser:
    """A parser for ``python -m <module>``; errors are reported as ``<module>: error: ...``."""
    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    return OneLineParser(
        prog=f"python -m {module}", description=description, error_prog=module, **kwargs
    )


def run_command(
    prog: str,
    main: Callable[[Sequence[str] | None], object],
    argv: Sequence[str] | None = None,
    extra: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``main(argv)``; return its exit code (0 when it returns None).

    ``UsageError`` and the exception types in ``extra`` print ``<prog>: error: <message>``
    on stderr and give exit code 2; Ctrl-C gives 130. Anything else is a bug and keeps its
    traceback.
    """
    try:
        rc = main(argv)
    except (UsageError, *extra) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc) if isinstance(rc, int) else 0


def number(
    kind: type = float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> Callable[[str], Any]:
    """An argparse ``type=``: a finite `kind` (int or float) in ``[lo, hi]`` (``(lo, hi]`` with
    `lo_open`); NaN, inf and values out of range are a one-line usage error naming the flag
    (argparse adds the flag's name to the message)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a{'n' if kind is int else ''} {kind.__name__}: {text!r}"
            ) from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{text} must be <= {hi:g}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
