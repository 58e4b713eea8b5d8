"""What the benchmarks read of a process from /proc, and a percentile."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # the command name in parentheses may itself hold spaces
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid: int) -> tuple[float, float, int]:
    """(user seconds, system seconds, context switches) of a process so far."""
    fields = _stat_fields(pid)
    switches = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if "ctxt_switches:" in line:
            switches += int(line.split()[1])
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, switches


def run_and_wait_seconds(pid: int) -> tuple[float, float]:
    """(seconds running on a CPU, seconds runnable but waiting for one) of a process's main
    thread so far (``/proc/<pid>/schedstat``): the wait is what other processes cost it."""
    run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(run) / 1e9, int(wait) / 1e9


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of all cores, all CPU seconds) since boot, from ``/proc/stat``."""
    jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    return (sum(jiffies) - idle) / CLK_TCK, sum(jiffies) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")
