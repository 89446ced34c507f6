"""Customers' view of a run: load in a child process, phases cut by wall-clock marks.

Used by `immunity demo` and `immunity bench rollout`: the load generator runs as its own
process (so the orchestrator's work never skews the customers' latencies), and every
request line carries `at` (epoch seconds) so phases can be cut exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunity.sandbox.load import percentile


@dataclass(frozen=True)
class PhaseStats:
    name: str
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
            "seconds": round(self.seconds, 2),
        }


class LoadProcess:
    """`immunity sandbox load` in a child process, stopped with SIGINT."""

    def __init__(self, sandbox_dir: Path, rps: float, out: Path, duration: float = 3600) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "immunity",
                "sandbox",
                "load",
                "--dir",
                str(sandbox_dir),
                "--rps",
                str(rps),
                "--duration",
                str(duration),
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.out.exists() and self.out.stat().st_size > 0:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"load generator exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("load generator sent no request within 20s")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def records(self) -> list[dict[str, Any]]:
        rows = []
        with open(self.out) as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
        return rows


def phase(name: str, rows: list[dict[str, Any]], start: float, end: float) -> PhaseStats:
    """Requests sent in [start, end) (epoch seconds)."""
    sel = [r for r in rows if start <= float(r.get("at", 0.0)) < end]
    lat = sorted(float(r["latency_ms"]) for r in sel)
    failed = sum(1 for r in sel if r["status"] == 0 or r["status"] >= 500)
    return PhaseStats(
        name,
        len(sel),
        failed,
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        lat[-1] if lat else 0.0,
        end - start,
    )


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
