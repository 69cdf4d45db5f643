"""Memory plans: how much memory a run may use, and refusing a plan that cannot fit before any work.

Every size option (bootstrap rounds, Monte-Carlo runs, random subsets, batch sizes, sequence lengths) is
turned into an estimate of the bytes the run needs before it starts; work whose size grows with the count
runs in chunks of bounded memory (`chunk_size`), so what remains is the result itself (e.g. bootstrap
samples `[R, M]`). A plan whose estimate exceeds the memory budget is refused with `ResourceError`,
naming the option, the estimate and the largest value that fits.

The budget is `MEMORY_FRACTION` (80 %) of the memory available when the plan is made: the host's
`MemAvailable` (Linux `/proc/meminfo`; elsewhere `os.sysconf` free pages), bounded by a cgroup (container)
limit if one is set, and, on an accelerator, by the device's free memory. The environment variable
`JAXRANK_MEMORY_LIMIT` (bytes, or with a unit: `512M`, `8G`) caps it further, e.g. to share a machine.

Example:
    >>> from jaxrank.resources import check_memory, format_bytes
    >>> budget = check_memory(8 * 10**6, what="the samples [R, 2]", option="num_rounds", value=10**6,
    ...                       per_unit=8)  # fits: returns the budget in bytes
    >>> format_bytes(3 * 2**30)
    '3.2 GB'
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import sys
from typing import Any

__all__ = [
    "CHUNK_BYTES",
    "MEMORY_FRACTION",
    "ResourceError",
    "available_memory",
    "check_memory",
    "check_memory_terms",
    "chunk_bytes",
    "chunk_size",
    "format_bytes",
    "memory_budget",
]

#: Share of the available memory a plan may use (the rest is headroom for the interpreter, XLA's own
#: buffers and other processes).
MEMORY_FRACTION = 0.8
#: Default memory of one chunk of chunked work (its working set; results are counted separately); at most a
#: quarter of the budget (`chunk_bytes`).
CHUNK_BYTES = 256 << 20

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


class ResourceError(ValueError):
    """A plan that cannot fit in memory: names the option, the estimate, the budget and what would fit.

    Attributes:
        option: the argument to change (a library name such as `num_rounds`; the command line shows its flag).
        value: its value.
        needed: estimated bytes.
        available: the budget in bytes (`memory_budget()`).
        largest: the largest value of `option` that fits, when known.
        what: what the memory is for.
    """

    def __init__(self, *, option: str, value: Any, needed: int, available: int, what: str,
                 largest: int | None = None, unit: str = ""):
        self.option, self.value, self.needed, self.available = option, value, int(needed), int(available)
        self.largest, self.what, self.unit = largest, what, unit
        super().__init__(self.render())

    def render(self, flag: str | None = None) -> str:
        """The message, naming the option as `flag` (e.g. `--bootstrap`) if given."""
        name = flag or self.option
        eq = " " if flag else "="
        text = (f"{name}{eq}{self.value} needs about {format_bytes(self.needed)} of memory for {self.what}, more "
                f"than the {format_bytes(self.available)} this run may use ({int(MEMORY_FRACTION * 100)} % of the "
                "free memory; JAXRANK_MEMORY_LIMIT caps it)")
        if self.largest is not None and self.largest >= 1:
            text += f"; use {name}{eq}{self.largest}{self.unit} or less"
        elif self.largest is not None:
            text += f"; even {name}{eq}1 does not fit"
        return text


def format_bytes(n: float) -> str:
    """`n` bytes in decimal units, e.g. `'3.2 GB'`."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"JAXRANK_MEMORY_LIMIT must be a size such as 8G, 512M or 1000000000, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _read_int(path: str) -> int | None:
    try:
        text = pathlib.Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def _cgroup_available() -> int | None:
    limit = _read_int("/sys/fs/cgroup/memory.max")  # cgroup v2 ("max" when unlimited -> None)
    if limit is not None:
        used = _read_int("/sys/fs/cgroup/memory.current") or 0
        return max(limit - used, 0)
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
    if limit is not None and limit < (1 << 60):
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        return max(limit - used, 0)
    return None


def _device_available() -> int | None:
    """Free memory of the first accelerator, if jax is already in use on one (never imports jax itself)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    try:
        device = jax.local_devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without statistics: host memory only
        return None
    limit = stats.get("bytes_limit")
    if not limit:
        return None
    return max(int(limit) - int(stats.get("bytes_in_use", 0)), 0)


def available_memory(*, device: bool = True) -> int:
    """Bytes of memory available now: host (and cgroup) memory, the accelerator's free memory when `device`
    and jax runs on one, and `JAXRANK_MEMORY_LIMIT` if set; the smallest of these."""
    values = [_host_available()]
    cg = _cgroup_available()
    if cg is not None:
        values.append(cg)
    if device:
        dev = _device_available()
        if dev is not None:
            values.append(dev)
    limit = os.environ.get("JAXRANK_MEMORY_LIMIT")
    if limit:
        values.append(_parse_size(limit))
    return int(min(values))


def memory_budget(*, device: bool = True) -> int:
    """The bytes a plan may use: `MEMORY_FRACTION` of `available_memory()`."""
    return int(MEMORY_FRACTION * available_memory(device=device))


def check_memory(needed: float, *, what: str, option: str, value: Any, per_unit: float | None = None,
                 fixed: float = 0.0, device: bool = True, unit: str = "") -> int:
    """Refuse a plan whose estimate `needed` bytes exceeds the budget.

    Args:
        needed: estimated bytes of the plan.
        what: what the memory is for (e.g. "the bootstrap samples [R, M]").
        option, value: the size option and its value, named in the error.
        per_unit, fixed: when the estimate is `fixed + per_unit * value`, the error also names the largest
            value that fits.
        device: include the accelerator's free memory in the budget.
        unit: appended to the suggested value in the message (e.g. `" tokens"`).

    Returns:
        The budget in bytes (the plan fits).

    Raises:
        ResourceError: the plan does not fit.
    """
    budget = memory_budget(device=device)
    if needed > budget:
        largest = None
        if per_unit:
            largest = int(max(0.0, (budget - fixed)) // per_unit)
        raise ResourceError(option=option, value=value, needed=int(needed), available=budget, what=what,
                            largest=largest, unit=unit)
    return budget


def check_memory_terms(terms: dict[str, tuple[int, float]], *, what: str, fixed: float = 0.0,
                       device: bool = True) -> int:
    """`check_memory` for an estimate `fixed + sum(value * per_unit)` over several size options
    (`terms = {option: (value, per_unit bytes)}`): the error names the option with the largest share and
    the largest value of it that fits with the others unchanged."""
    needed = fixed + sum(v * b for v, b in terms.values())
    option, (value, per_unit) = max(terms.items(), key=lambda kv: kv[1][0] * kv[1][1])
    return check_memory(needed, what=what, option=option, value=value, per_unit=per_unit,
                        fixed=needed - value * per_unit, device=device)


def chunk_bytes() -> int:
    """Working memory of one chunk: `CHUNK_BYTES`, or a quarter of the budget when that is smaller."""
    return int(min(CHUNK_BYTES, memory_budget() // 4))


def chunk_size(total: int, item_bytes: float, *, max_bytes: float | None = None, max_items: int | None = None,
               multiple: int = 1) -> int:
    """Items per chunk of chunked work: at most `max_bytes` (default `chunk_bytes()`) of working memory
    (`item_bytes` each), at most
    `max_items` (e.g. to keep one compiled call short enough for Ctrl-C to stop it soon), at least one (or
    `multiple`), a multiple of `multiple`, and no more than needed for `total` items; the chunks are then
    made even so that the last one pads little."""
    total = max(int(total), 1)
    max_bytes = chunk_bytes() if max_bytes is None else max_bytes
    cap = int(max(1, max_bytes // max(float(item_bytes), 1.0)))
    if max_items is not None:
        cap = min(cap, int(max_items))
    cap = max(1, min(cap, total))
    n_chunks = math.ceil(total / cap)
    size = math.ceil(total / n_chunks)
    m = max(int(multiple), 1)
    return max(m, math.ceil(size / m) * m)
