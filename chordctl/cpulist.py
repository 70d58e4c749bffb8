"""CPU lists in the Linux cpulist syntax of ``taskset -c``: ``0``, ``0-3``, ``0,2,4-5``.

A leaf module: config.py validates ``cpus:`` with it and core/affinity.py
pins with it, so config need not import core.
"""

from __future__ import annotations

NONE = "none"   # the config value that turns pinning off


def parse_cpulist(text: str) -> frozenset[int]:
    """``"0,2-3"`` -> {0, 2, 3}; ValueError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("is empty; give CPUs like 0, 0-3 or 0,2")
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"has {part!r}, which is not a CPU number or range "
                             f"(give CPUs like 0, 0-3 or 0,2)")
        a, b = int(low), int(high) if dash else int(low)
        if b < a:
            raise ValueError(f"has the range {part!r}, which runs backwards")
        if b - a > 65535:
            raise ValueError(f"has the range {part!r}, which is too long")
        cpus.update(range(a, b + 1))
    return frozenset(cpus)


def format_cpulist(cpus) -> str:
    """{0, 2, 3} -> ``"0,2-3"``."""
    runs: list[list[int]] = []          # [first, last] of each run of consecutive CPUs
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
