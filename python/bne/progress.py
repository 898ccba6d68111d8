"""Moved to :mod:`bne.console` (the one home of what bne prints); kept for the imports that still
name it."""

from .console import INTERVAL, LineProgress, is_terminal, progress_bar

__all__ = ["INTERVAL", "LineProgress", "is_terminal", "progress_bar"]
