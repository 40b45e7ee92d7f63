"""Text that a peer chose, made safe to echo: into errors, logs and files, never whole."""

from __future__ import annotations

SHOWN_CHARS = 80


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """Return ``repr(text)``, cut to ``limit`` characters with the full length said."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
