"""How sizes and durations read to an operator: one implementation for the CLI, the status view and artifacts."""

from __future__ import annotations

from seedvault.errors import ConfigError


def human_bytes(n: int | None) -> str:
    """A byte count as an operator reads it (1024-based units); '-' for unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def human_seconds(seconds: float | None) -> str:
    """A duration or an age: '45 s', '12 min', '5.2 h', '3.1 d'; '-' for unknown."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if abs(s) < 90:
        return f"{s:.0f} s" if abs(s) >= 10 or s == int(s) else f"{s:.1f} s"
    if abs(s) < 90 * 60:
        return f"{s / 60:.0f} min"
    if abs(s) < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def parse_duration(text: str) -> float:
    """'24h', '90m', '30s', '7d' or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ConfigError(f"invalid duration {text!r}; use e.g. 30s, 15m, 24h, 7d") from None
