"""What `SqliteJournal.append_many` hands back is what a read of the file gives: flat data
is copied (not decoded again), anything else decoded from the JSON written. Real SQLite."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import anyio

from immunity.journal.sqlite import SqliteJournal


class Colour(enum.StrEnum):
    RED = "red"


DATA: list[dict[Any, Any]] = [
    {},
    {"release": "v2", "purpose": "deploy", "seconds": 0.1 + 0.2, "ok": True, "none": None},
    {"big": 2**70, "neg": -0.0, "tiny": 5e-324},
    {"tuple": (1, 2), "nested": {"a": [1, {"b": None}]}},
    {"enum": Colour.RED},  # a str subclass: read back as a plain str
    {1: "int key"},  # JSON keys are strings
    {"when": Path("/x")},  # not JSON: written as its str()
]


def test_what_an_append_returns_is_what_the_file_reads_back(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "j.db")

    async def main() -> tuple[list[Any], list[Any]]:
        record = await journal.begin("app", "v2", {})
        written = await journal.append_many(
            record.id, [("test.entry", None, None, d) for d in DATA]
        )
        read = list(await journal.entries(record.id))
        await journal.close()
        return written, read

    written, read = anyio.run(main)
    assert [e.data for e in written] == [e.data for e in read]
    # exact types too (an equal str subclass or tuple would fold differently elsewhere)
    for w, r in zip(written, read, strict=True):
        assert {k: type(v) for k, v in w.data.items()} == {k: type(v) for k, v in r.data.items()}
    assert read[4].data == {"enum": "red"} and type(read[4].data["enum"]) is str
    assert read[5].data == {"1": "int key"}
    assert read[3].data["tuple"] == [1, 2]
