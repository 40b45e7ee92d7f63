"""Text that a peer chose, made safe to echo: into errors, logs and files, never whole."""

from __future__ import annotations

SHOWN_CHARS = 80
ONE_LINE_CHARS = 300  # a peer's refusal, sent on and printed (names may be long)


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """Return ``repr(text)``, cut to ``limit`` characters with the full length said."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def one_line(text: str, limit: int = ONE_LINE_CHARS) -> str:
    """Return ``text`` on one printable line of at most ``limit`` characters."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
