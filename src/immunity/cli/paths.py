"""Files the CLI writes on request (`--json FILE`, `--html FILE`, `-o FILE`, `--out FILE`,
`$GITHUB_OUTPUT`): checked before the command does anything, and written without a
traceback afterwards.

A destination that cannot be written is refused at once, exit 2, nothing run: a deployment
that ran for minutes must not end in a traceback and exit 1 because its `--json` path was a
typo. A write that fails afterwards anyway (the disk filled, the directory went away) is
said in one line and never changes the command's exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from immunity.cli.output import err
from immunity.files import cannot_write, writable

__all__ = ["cannot_write", "writable", "wrote"]


def wrote(what: str, dest: str | Path | None, write: Any, *, late: bool = True) -> bool:
    """Run `write()` (which writes `what` to `dest`); an OSError is said in one line on
    stderr and False returned. `late`: the command did its work, and its outcome and exit
    code stay what they were (else the write was the work: an error the caller exits on)."""
    try:
        write()
    except OSError as exc:
        said = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else exc
        err.print(
            ("warning" if late else "error")
            + f": could not write {what} to {dest} ({said})"
            + ("; the outcome and exit code are unchanged" if late else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return False
    return True
