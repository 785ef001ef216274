"""A one-line label for a file path, elided in the middle to the width it gets.

A word-wrapped QLabel breaks a path only at a hyphen, or nowhere: in the
docked Correct tab the workspace folder's second line was cut off. The middle
goes, so the root and the folder's own name stay readable; the tooltip holds
the whole path.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QResizeEvent
from qtpy.QtWidgets import QLabel, QSizePolicy


class PathLabel(QLabel):
    """Shows :meth:`set_path`'s path whole when it fits, else with an ellipsis in the middle."""

    def __init__(self) -> None:
        super().__init__()
        self._path = ""
        # the layout decides the width: the elided text must not widen the dock
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def set_path(self, path: str) -> None:
        self._path = path
        self.setToolTip(path)
        self._elide()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = self.contentsRect().width() - 2 * self.margin()
        self.setText(self.fontMetrics().elidedText(self._path, Qt.TextElideMode.ElideMiddle, width))
