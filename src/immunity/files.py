"""Whether a file the user named for output can be written, asked before a command runs
(`writable`: the typer callback of every option naming a file to write, in the CLI, the
benches and the sandbox's commands alike)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any


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


def writable(ctx: Any, param: Any, value: Any) -> Any:
    """typer callback of an option naming a file to write: exit 2 before anything runs when
    it cannot be written, saying which path and why in one line (`-` is stdout)."""
    if value is None or str(value) == "-" or ctx.resilient_parsing:
        return value
    problem = cannot_write(Path(value))
    if problem:
        import typer

        name = max(param.opts, key=len) if param.opts else str(param.name)
        sys.stderr.write(
            f"error (usage): {name} {value}: {problem}; nothing was touched\n"
            f"next: give {name} a path in a directory that exists and can be written, and "
            "run the same command again\n"
        )
        raise typer.Exit(2)
    return value
