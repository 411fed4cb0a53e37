"""The demo's output: plain lines, or (on a terminal) a table redrawn in place, with ANSI styles."""

from __future__ import annotations

import shutil
from typing import Final, TextIO

__all__ = ["STYLES", "Display", "Line"]

STYLES: Final = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
#: One line of a frame: its text and its style names (keys of :data:`STYLES`).
Line = tuple[str, tuple[str, ...]]


class Display:
    """Plain lines, or (on a terminal) a table redrawn in place."""

    def __init__(self, out: TextIO, *, live: bool, color: bool) -> None:
        self.out = out
        self.live = live
        self.color = color
        self._drawn = 0

    def paint(self, text: str, *styles: str) -> str:
        """``text`` in ``styles`` (as is without colors)."""
        if not self.color or not styles:
            return text
        codes = ";".join(STYLES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def print(self, text: str = "", *styles: str) -> None:
        """One line below everything printed so far."""
        self.out.write(self.paint(text, *styles) + "\n")
        self.out.flush()

    def frame(self, lines: list[Line]) -> None:
        """Redraw the live area (terminal only): move up over the last frame, rewrite each line."""
        width = max(20, shutil.get_terminal_size().columns - 1)
        parts = [f"\x1b[{self._drawn}F" if self._drawn else ""]
        for text, styles in lines:
            parts.append("\x1b[2K" + self.paint(text[:width], *styles) + "\n")
        parts.append("\x1b[J")  # a shorter frame leaves nothing of the last one below it
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(lines)

    def release(self) -> None:
        """The live area stays as it is; later output goes below it."""
        self._drawn = 0

    def cursor(self, visible: bool) -> None:
        """Show or hide the cursor (terminal only)."""
        if self.live:
            self.out.write("\x1b[?25h" if visible else "\x1b[?25l")
            self.out.flush()
