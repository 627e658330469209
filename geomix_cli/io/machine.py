"""Machine facts read from the system (Linux /proc and /sys; None elsewhere): the memory a
geomix process may still use, its resident set and peak resident set, the CPU model.

`check_memory` is how every size that a user asks for (a generator spec, a file's declared
arrays, a simulation budget, a benchmark batch) is refused up front, with the estimate and the
available memory, instead of ending in a MemoryError traceback or the kernel's OOM killer.
"""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None

from geomix_cli.errors import InputError


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as `free -h`)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _proc_fields(path: str) -> dict[str, int]:
    """'Name:   123 kB' lines of /proc/meminfo or /proc/self/status -> {name: bytes}."""
    out = {}
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                    out[name.strip()] = int(parts[0]) * scale
    except OSError:
        pass
    return out


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1), None if unlimited."""
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for base in (f"/sys/fs/cgroup{path}", "/sys/fs/cgroup"):
                limit = _read_int(f"{base}/memory.max")
                if limit is not None:
                    used = _read_int(f"{base}/memory.current") or 0
                    return max(0, limit - used)
        elif "memory" in controllers.split(","):
            for base in (f"/sys/fs/cgroup/memory{path}", "/sys/fs/cgroup/memory"):
                limit = _read_int(f"{base}/memory.limit_in_bytes")
                if limit is not None:
                    if limit >= 1 << 60:  # v1 writes a huge number for 'no limit'
                        return None
                    used = _read_int(f"{base}/memory.usage_in_bytes") or 0
                    return max(0, limit - used)
    return None


def available_memory_bytes() -> int | None:
    """Memory this process can still allocate: the least of the kernel's MemAvailable, the room
    left in its memory cgroup (containers) and its address-space limit (ulimit -v) minus what it
    already maps. None where none of these is known."""
    candidates = []
    meminfo = _proc_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        candidates.append(meminfo["MemAvailable"])
    room = _cgroup_room()
    if room is not None:
        candidates.append(room)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS) if resource else (None, None)
    if resource is not None and soft != resource.RLIM_INFINITY:
        mapped = _proc_fields("/proc/self/status").get("VmSize", 0)
        candidates.append(max(0, soft - mapped))
    return min(candidates) if candidates else None


def check_memory(needed_bytes: float, *, what: str, file: str | None = None,
                 hint: str = "") -> None:
    """Refuse (InputError, exit 2) work estimated to need more memory than is available."""
    available = available_memory_bytes()
    if available is None or needed_bytes <= available:
        return
    raise InputError(f"{what} needs about {format_bytes(needed_bytes)} of memory; "
                     f"{format_bytes(available)} is available here" + (f"; {hint}" if hint else ""),
                     file=file)


def resident_set_bytes() -> int | None:
    """Current resident-set size of this process in bytes (/proc/self/statm), or None."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int | None:
    """This process's peak resident memory (VmHWM) since it started or since the last
    `reset_peak_resident()`, or None where the system does not say."""
    return _proc_fields("/proc/self/status").get("VmHWM")


def reset_peak_resident() -> bool:
    """Reset this process's peak resident memory (Linux: /proc/self/clear_refs); False where
    that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def cpu_model_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
