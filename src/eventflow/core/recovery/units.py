"""Job resources as numbers: walltime in seconds, memory in MiB, and back to SLURM's spelling.

The policy multiplies resources (memory x 1.5, walltime x 2), so it needs them as
numbers; the runner hands them to sbatch, so they go back out in a form sbatch reads.
Durations in recovery.yaml (delays) use the same parser.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MEM_FACTOR = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)\s*$", re.IGNORECASE)
_DURATION_FACTOR = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def memory_mb(value: Any) -> int:
    """MiB in a SLURM memory spec: ``2G``, ``1500M``, ``1500`` (MiB, as sbatch --mem reads it)."""
    if isinstance(value, bool):
        raise ValueError(f"memory {value!r}: expected e.g. 2G or 1500M")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory {value!r}: must be positive")
        return int(math.ceil(value))
    match = _MEM.match(str(value))
    if match is None:
        raise ValueError(f"memory {value!r}: expected e.g. 2G or 1500M")
    mb = float(match.group(1)) * _MEM_FACTOR[match.group(2).upper()]
    if mb <= 0:
        raise ValueError(f"memory {value!r}: must be positive")
    return int(math.ceil(mb))


def format_memory(mb: int) -> str:
    """``2G`` when a whole number of GiB, else ``1536M``."""
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


def walltime_seconds(value: Any) -> int:
    """Seconds in a SLURM time spec: minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``.

    These are the forms ``sbatch --time`` accepts; a bare number is minutes, as there.
    """
    if isinstance(value, bool):
        raise ValueError(f"walltime {value!r}: expected minutes or HH:MM:SS")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"walltime {value!r}: must be positive")
        return int(round(value * 60))
    text = str(value).strip()
    days = 0
    try:
        if "-" in text:
            day_part, text = text.split("-", 1)
            days = int(day_part)
            parts = [int(p) for p in text.split(":")]
            parts += [0] * (3 - len(parts))  # days-hours[:minutes[:seconds]]
        else:
            parts = [int(p) for p in text.split(":")]
            parts = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}.get(len(parts), [])
        if len(parts) != 3 or min(parts) < 0 or days < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"walltime {value!r}: expected minutes or HH:MM:SS") from None
    seconds = days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if seconds <= 0:
        raise ValueError(f"walltime {value!r}: must be positive")
    return seconds


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24; sbatch reads that as hours:minutes:seconds)."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def duration_seconds(value: Any) -> int:
    """A delay: seconds (a number), ``90s``, ``10m``, ``2h``, ``1d``, or ``HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r}: expected seconds, 10m, 2h or HH:MM:SS")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration {value!r}: must not be negative")
        return int(round(value))
    match = _DURATION.match(str(value))
    if match is not None:
        return int(round(float(match.group(1)) * _DURATION_FACTOR[match.group(2).lower()]))
    if ":" in str(value):
        parts = str(value).strip().split(":")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            h, m, s = (int(p) for p in parts)
            return h * 3600 + m * 60 + s
    raise ValueError(f"duration {value!r}: expected seconds, 10m, 2h or HH:MM:SS")


def parse_time(stamp: str) -> datetime:
    """An event's ``recorded_at`` (ISO-8601 UTC, ``...Z``) as an aware datetime."""
    text = stamp.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def add_seconds(stamp: str, seconds: int) -> str:
    """``stamp`` plus ``seconds``, in the log's own timestamp format."""
    moment = parse_time(stamp) + timedelta(seconds=seconds)
    return moment.astimezone(timezone.utc).strftime(_ISO_FORMAT)


def not_after(stamp: str, now: str) -> bool:
    """True if the moment ``stamp`` is at or before ``now`` (both ISO-8601)."""
    return parse_time(stamp) <= parse_time(now)
