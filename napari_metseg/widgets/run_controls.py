"""Progress and running state shared by the panels that start work in a worker."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton


class RunControls:
    """Mixin for a panel with ``progress_bar``, ``status_label``, ``cancel_button``
    and the buttons that start work (``action_buttons``)."""

    progress_bar: QProgressBar
    status_label: QLabel
    cancel_button: QPushButton
    action_buttons: tuple[QPushButton, ...]

    def set_running(self, running: bool) -> None:
        for button in self.action_buttons:
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress_bar.setRange(0, 0)

    def show_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(min(done, max(total, 1)))
        self.status_label.setText(message)
