"""Fixtures for the end-to-end tests (see e2e_helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import fleet3  # noqa: F401
