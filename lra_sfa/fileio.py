"""The permissions of files written through a temp file and a rename.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a
record, checkpoint or cache renamed into place from it would be private to
its writer: a results store or data cache shared by a team would be
unreadable to the others. Each atomic writer therefore sets the mode that an
ordinary ``open(path, "w")`` would have given, 0o666 less the umask.
"""

from __future__ import annotations

import os
import threading

_UMASK_LOCK = threading.Lock()


def new_file_mode() -> int:
    """0o666 less the process umask (the mode a plain ``open(path, "w")`` gives a new file)."""
    with _UMASK_LOCK:  # the umask can only be read by setting it; it is restored at once
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def chmod_like_open(path_or_fd: str | os.PathLike | int) -> None:
    """Give a temp file (a path, or an open descriptor) the mode ``open()`` would have given it."""
    if isinstance(path_or_fd, int):
        os.fchmod(path_or_fd, new_file_mode())
    else:
        os.chmod(path_or_fd, new_file_mode())
