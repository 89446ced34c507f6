"""Files the CLI writes on request (`--json FILE`, `--html FILE`, `-o FILE`, `--out FILE`,
`$GITHUB_OUTPUT`): checked before the command does anything, and written without a
traceback afterwards.

A destination that cannot be written is refused at once, exit 2, nothing run: a deployment
that ran for minutes must not end in a traceback and exit 1 because its `--json` path was a
typo. A write that fails afterwards anyway (the disk filled, the directory went away) is
said in one line and never changes the command's exit code.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import typer

from immunity.cli.output import err


def cannot_write(path: Path) -> str | None:
    """Why `path` cannot be written as a file ("" never; None when it can). Creates no
    directory; a file created to find out is removed again, an existing one is not changed
    (opened for appending, nothing appended)."""
    if path.is_dir():
        return "it is a directory"
    parent = path.parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                return f"{up} is a file, not a directory"
            if up != parent:
                return f"directory {parent} does not exist (it is not created)"
            break
    existed = path.exists()
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        return f"it cannot be written: {exc.strerror or exc}"
    finally:
        if not existed and path.exists():
            with contextlib.suppress(OSError):
                os.unlink(path)
    return None


def writable(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """typer callback of an option naming a file to write: exit 2 before anything runs when
    it cannot be written (`-` is stdout)."""
    if value is None or str(value) == "-" or ctx.resilient_parsing:
        return value
    problem = cannot_write(Path(value))
    if problem:
        name = max(param.opts, key=len) if param.opts else str(param.name)
        err.print(
            f"error (usage): {name} {value}: {problem}; nothing was touched",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        err.print(
            f"next: give {name} a path in a directory that exists and can be written, and run "
            "the same command again",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    return value


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
