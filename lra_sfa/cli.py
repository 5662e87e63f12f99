"""What every Hydra app of the project does with bad input: one line on stderr, exit status 2.

A config value, a file or a checkpoint that the app cannot use raises one of
the project's clear errors (a ValueError naming the key or file, and for a run
also data, checkpoint and file-system errors); the user sees that message
alone, not a traceback, and scripts see status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def exit_on_bad_input(prog: str, errors: tuple[type[BaseException], ...] = (ValueError,)) -> Iterator[None]:
    """Run the block; on one of ``errors`` print ``<prog>: error: <message>`` to stderr and exit with 2."""
    try:
        yield
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
