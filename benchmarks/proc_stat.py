"""CPU time from Linux's /proc, for the benchmarks: a process's or a thread's, a
process tree's, and the whole machine's."""

from __future__ import annotations

import os
from pathlib import Path


def _fields(stat: Path) -> list[str]:
    # After the command name, which may itself hold spaces and parentheses.
    return stat.read_text().rsplit(")", 1)[1].split()


def cpu_seconds_of(stat: Path) -> tuple[float, float]:
    """(user, system) CPU seconds from a /proc stat file (a process's or a thread's)."""
    fields = _fields(stat)
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and every live process below it, plus
    what their children that have already exited and been reaped used (cutime and
    cstime): PostgreSQL's backends end with their connections, and without those the
    tree's total would fall between two readings."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _fields(entry / "stat")
        except OSError:
            continue  # exited meanwhile
        tick = os.sysconf("SC_CLK_TCK")
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    total = 0.0
    for pid, seconds in times.items():
        walk, hops = pid, 0
        while walk > 1 and walk != root and hops < 64:  # bounded: /proc may change under us
            walk, hops = parents.get(walk, 0), hops + 1
        if walk == root:
            total += seconds
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds summed over all cores, elapsed seconds) since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick / (os.cpu_count() or 1)
