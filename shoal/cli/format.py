"""Tables as the docker CLI prints them, and the few words it uses for time."""

from __future__ import annotations

from datetime import UTC, datetime


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def ago(timestamp: str) -> str:
    try:
        then = datetime.strptime(timestamp[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        return ""
    seconds = int((datetime.now(UTC).replace(tzinfo=None) - then).total_seconds())
    if seconds < 60:
        seconds = max(seconds, 1)
        return f"{seconds} second{'s' if seconds != 1 else ''} ago"
    if seconds < 3600:
        return f"{seconds // 60} minute{'s' if seconds >= 120 else ''} ago"
    return f"{seconds // 3600} hour{'s' if seconds >= 7200 else ''} ago"
