"""Run a source's queries concurrently without wrapping its errors in an ExceptionGroup."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TypeVar

import anyio

from immunity.errors import SignalError

K = TypeVar("K")
V = TypeVar("V")


async def gather(jobs: Mapping[K, Awaitable[V]]) -> dict[K, V]:
    """Await every job concurrently; the first SignalError is raised as itself.

    A job that fails with SignalError lets its siblings finish (each is bounded by its own
    timeout), so the ordinary "could not measure" case reaches the engine as one SignalError.
    Any other exception propagates through the task group as usual.
    """
    results: dict[K, V] = {}
    errors: list[SignalError] = []

    async def run(key: K, job: Awaitable[V]) -> None:
        try:
            results[key] = await job
        except SignalError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for key, job in jobs.items():
            tg.start_soon(run, key, job)
    if errors:
        raise errors[0]
    return results
