"""The rollout plan: which hosts go in which wave."""

from __future__ import annotations

import math
from collections.abc import Sequence

from immunity.domain import HostRef


def wave_sizes(waves: Sequence[int | str], n_hosts: int) -> list[int]:
    """Cumulative host counts per wave, strictly growing, ending at `n_hosts`.

    `[1, "25%", "100%"]` on 8 hosts gives `[1, 2, 8]`; a wave that would add no host is
    dropped, and a plan that stops short of the fleet gets a last wave of everything.
    """
    out: list[int] = []
    for w in waves:
        if isinstance(w, int):
            target = w
        else:
            target = math.ceil(float(w.strip().rstrip("%")) / 100.0 * n_hosts)
        target = max(1, min(n_hosts, target))
        if not out or target > out[-1]:
            out.append(target)
    if not out or out[-1] < n_hosts:
        out.append(n_hosts)
    return out


def plan_waves(hosts: Sequence[HostRef], waves: Sequence[int | str]) -> list[list[HostRef]]:
    """Hosts per wave, in fleet order."""
    sizes = wave_sizes(waves, len(hosts))
    out: list[list[HostRef]] = []
    prev = 0
    for size in sizes:
        out.append(list(hosts[prev:size]))
        prev = size
    return out


def with_holdback(
    waves: Sequence[Sequence[HostRef]], *, guard_s: float, holdback: bool
) -> tuple[list[list[HostRef]], HostRef | None]:
    """The waves without the *holdback*: the last host of the last wave stays on the old
    release through the guard period, as the baseline its comparisons need, and is switched
    last. Only with a guard period, `holdback` on, and two hosts or more; a last wave left
    empty is dropped."""
    plan = [list(w) for w in waves]
    if guard_s <= 0 or not holdback or sum(len(w) for w in plan) < 2:
        return plan, None
    held = plan[-1].pop()
    if not plan[-1]:
        plan.pop()
    return plan, held
