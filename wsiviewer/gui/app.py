"""Start the viewer: a QApplication, the main window, optionally a slide to open."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pyqtgraph.util.garbage_collector import GarbageCollector
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from wsiviewer.gui.analysis import wait_for_model_loads
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.platform_check import platform_problem


def application(argv: Sequence[str] | None = None) -> QApplication:
    """The running QApplication, created if needed."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("wsiviewer")
    app.setOrganizationName("wsiviewer")
    app.setApplicationDisplayName("wsiviewer")
    return app


def run(slide: str | Path | None = None) -> int:
    """Show the main window (and open ``slide`` once it is on screen); run until closed.

    A missing system library of Qt's platform plugin is said in one line (exit status 1)
    before Qt would abort. torch is not imported here: the window is up before the first
    analysis needs it.
    """
    problem = platform_problem()
    if problem is not None:
        print(f"wsiviewer: error: {problem}", file=sys.stderr)
        return 1
    app = application()
    # Python's cyclic garbage collector runs in whichever thread allocates (tile readers, the
    # analysis worker, Dask's threads) and may free Qt objects there, or in the middle of a
    # signal: Qt then crashes or deadlocks. Collect on a timer in the GUI thread instead
    # (pyqtgraph's collector, made for this).
    collector = GarbageCollector(interval=1.0)
    window = MainWindow()
    window.show()
    if slide is not None:
        QTimer.singleShot(0, lambda: window.open_slide(slide))
    code = app.exec()
    # The window is gone; a model load that Esc or quitting abandoned ends before the
    # process does (cut off, it would abort inside torch).
    wait_for_model_loads()
    del collector
    return code
