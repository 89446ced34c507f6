"""Engine tests import their in-memory fleet (memory_fleet) by module name."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
