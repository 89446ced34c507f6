"""The `immunity` command. `--version` is answered here, before the command line itself
(typer, rich, the config models: about half a second of imports) is loaded."""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the `immunity` script and of `python -m immunity`."""
    from immunity.cli.streams import protect_standard_streams

    protect_standard_streams()  # a reader that goes away must not stop a deployment
    if sys.argv[1:] == ["--version"]:
        from immunity import __version__

        sys.stdout.write(f"immunity {__version__}\n")
        return
    from immunity.cli.app import main as run

    run()
