"""Standard output and error that outlive their reader.

A deployment must not stop half-way because nobody reads what it prints: an operator's ssh
session drops (the terminal hangs up: writes fail with EIO), a CI log collector goes away,
or a pipe's reader exits (`immunity deploy ... | head -3`: writes fail with EPIPE; Python
ignores SIGPIPE, so the write raises BrokenPipeError). Printing then raised out of the
recorder into the run, which ended with exit 1 and a host drained out of the pool.

`ReaderProof` wraps a text stream: a write or flush that fails with EPIPE, EIO, ENXIO or
ECONNRESET points the stream's file descriptor at /dev/null (the remedy the Python docs give
for BrokenPipeError, "Note on SIGPIPE" in the `signal` module's documentation) and drops the
text; later output, including the interpreter's own flush at exit, then goes nowhere
instead of failing. Any other OSError on output (a full disk behind a redirect) drops that
text only. The run itself goes on: its journal, report and notifications are the record.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any, TextIO

GONE = frozenset({errno.EPIPE, errno.EIO, errno.ENXIO, errno.ECONNRESET})
"""errno values meaning the reader (a pipe's, a terminal's) is gone for good."""


class ReaderProof:
    """`stream` whose `write` and `flush` never raise OSError (see the module docstring).
    Every other attribute (isatty, fileno, encoding, ...) is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False
        """True once the reader went away (output now goes to /dev/null)."""

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._failed(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if exc.errno not in GONE or self.gone:
            return
        self.gone = True
        try:
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
        except (OSError, ValueError):  # no descriptor (a StringIO in a test): nothing to point
            return
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        with contextlib.suppress(OSError):  # what the stream still buffers goes there too
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect_standard_streams() -> None:
    """Wrap `sys.stdout` and `sys.stderr` in `ReaderProof` (once; idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderProof):
            setattr(sys, name, ReaderProof(stream))
