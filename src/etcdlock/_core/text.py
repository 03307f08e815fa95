"""Text for messages: a user's value quoted in an error or a log line is cut to a readable size."""

from __future__ import annotations

LIMIT = 120  # characters of a quoted value in a message


def shorten(text: str, limit: int = LIMIT) -> str:
    """`text`, or its head and tail around a note of its length when it is longer than `limit`."""
    if len(text) <= limit:
        return text
    tail = limit // 6
    return f"{text[: limit - tail]}...[{len(text):,} characters]...{text[-tail:]}"


def quoted(text: str, limit: int = LIMIT) -> str:
    """repr(text), shortened the same way."""
    return repr(text) if len(text) <= limit else repr(shorten(text, limit))


__all__ = ["quoted", "shorten"]
