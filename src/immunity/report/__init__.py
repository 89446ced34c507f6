"""A deployment's report: one self-contained HTML file (and its data as JSON).

`build` reads the journal (see `data`); `render_html` draws it with jinja2 and matplotlib
(inline SVG, inline CSS, no script, no network); `write` puts both files on disk;
`write_default` writes them next to the journal as `reports/<deployment id>.html|.json`
(the path the deployment's result and `immunity serve` point to).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from immunity.config import LoadedConfig, resolve_path
from immunity.errors import ImmunityError
from immunity.journal import Journal, open_journal
from immunity.journal.base import DeploymentRecord, JournalEntry
from immunity.report.data import build

__all__ = ["build", "default_path", "find", "load", "render_html", "write", "write_default"]


class UnknownDeployment(ImmunityError):
    reference = "unknown-deployment"
    exit_code = 2


async def load(journal: Journal, deployment_id: str) -> dict[str, Any]:
    """The report's data for `deployment_id` (a unique prefix is enough).

    Raises UnknownDeployment (exit 2) naming the recent deployments when it is not found.
    """
    record, entries = await find(journal, deployment_id)
    data = build(record, entries)
    if record.outcome in (None, "interrupted", "terminated") and not record.rollback:
        # left stopped, then undone by a rollback (nothing else can follow it: a deploy is
        # refused over it): say so, as `history` does
        later = [
            r
            for r in await journal.deployments(record.app)
            if r.started_at > record.started_at and not r.changed_nothing
        ]
        if later and later[0].rollback:
            data["ended_by"] = {"id": later[0].id, "label": later[0].release_words}
            data["sentence"] = (
                f"{data['sentence']} Then ended by {later[0].release_words} ({later[0].id})."
            )
    return data


async def find(
    journal: Journal, deployment_id: str
) -> tuple[DeploymentRecord, Sequence[JournalEntry]]:
    """The deployment `deployment_id` (or a unique prefix) and its entries.

    Raises UnknownDeployment (exit 2) naming the recent deployments when it is not found.
    """
    records = list(await journal.deployments())
    found = [r for r in records if r.id == deployment_id] or [
        r for r in records if r.id.startswith(deployment_id)
    ]
    if len(found) != 1:
        recent = ", ".join(f"{r.id} ({r.words})" for r in records[-5:])  # "(v4 unfinished)"
        raise UnknownDeployment(
            f"no {'unique ' if found else ''}deployment {deployment_id!r} in the journal",
            hint=f"recent deployments: {recent}" if recent else "the journal holds none yet",
        )
    record = found[0]
    return record, await journal.entries(record.id)


def render_html(data: dict[str, Any]) -> str:
    from immunity.report.html import render

    return render(data)


def write(data: dict[str, Any], html: Path | None, json_path: Path | None) -> None:
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(data), encoding="utf-8")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def default_path(loaded: LoadedConfig, deployment_id: str) -> Path:
    """`reports/<id>.html` beside the SQLite journal (beside immunity.yaml for a shared one)."""
    jc = loaded.config.journal
    base = resolve_path(loaded.base_dir, jc.path).parent if not jc.url else loaded.base_dir
    return base / "reports" / f"{deployment_id}.html"


async def write_default(
    loaded: LoadedConfig, deployment_id: str, journal: Journal | None = None
) -> Path:
    """Write `<default_path>` and its `.json` twin from the config's journal; return the HTML."""
    jc = loaded.config.journal
    own = journal is None
    j = journal or open_journal(resolve_path(loaded.base_dir, jc.path), jc.url)
    try:
        data = await load(j, deployment_id)
    finally:
        if own:
            await j.close()
    html = default_path(loaded, deployment_id)
    # matplotlib is synchronous CPU work: keep the event loop free while it draws
    import anyio.to_thread

    await anyio.to_thread.run_sync(write, data, html, html.with_suffix(".json"))
    return html
