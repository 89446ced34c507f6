"""Write tests/durations.json, the seconds each test file took, from JUnit XML reports.

    .venv/bin/pytest -n 2 --dist loadfile --no-loadscope-reorder --junitxml=/tmp/suite.xml
    .venv/bin/python scripts/suite_durations.py /tmp/suite.xml

tests/conftest.py hands the files to the xdist workers longest first from it. A testcase's
time in pytest's report is its setup, call and teardown together; a file's is their sum.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def file_of(classname: str) -> str | None:
    """tests.e2e.test_deploy(.Class) -> tests/e2e/test_deploy.py, if that file exists."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = "/".join(parts[:end]) + ".py"
        if (ROOT / path).is_file():
            return path
    return None


def main(reports: list[str]) -> None:
    seconds: dict[str, float] = {}
    for report in reports:
        for case in ET.parse(report).getroot().iter("testcase"):
            path = file_of(case.get("classname", ""))
            if path is not None:
                seconds[path] = seconds.get(path, 0.0) + float(case.get("time", "0"))
    out = ROOT / "tests" / "durations.json"
    files = dict(sorted(((f, round(s, 1)) for f, s in seconds.items()), key=lambda kv: -kv[1]))
    out.write_text(json.dumps({"files": files}, indent=1) + "\n")
    print(f"{out}: {len(files)} files, {sum(files.values()):.0f} s in all")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: suite_durations.py JUNIT_XML...")
    main(sys.argv[1:])
