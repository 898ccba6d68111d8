"""Short texts for one-line error messages (no imports: every layer may use it)."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 300) -> str:
    """The last non-empty line of ``e``'s message (where runtimes put the cause), at most ``limit``
    characters; the exception's type name when the message is empty."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else type(e).__name__
