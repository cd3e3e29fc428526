"""Screenshots of Help › About this model… (run under Xvfb).

    WSIVIEWER_IDC_DATA=../shared/data/idc xvfb-run -a -s "-screen 0 1920x1200x24" \
        .venv/bin/python tools/screenshot_about_model.py OUTDIR [MODEL]

A development tool, not part of the installed package. Opens the main window in a throw-away
data folder, chooses MODEL (default: the default model), opens the About page from the Help
menu, waits for the example patches (when ``WSIVIEWER_IDC_DATA`` names the dataset) and saves
the dialog (top of the page, and scrolled to "Where it does worst") and the Model panel. The
pictures hold dataset patches: keep them out of the repository.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__)
        return 2
    out_dir = Path(args[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="wsiviewer-about-shots-")
    os.environ["WSIVIEWER_DATA_DIR"] = data_dir

    from PySide6.QtCore import QSettings
    from PySide6.QtGui import QTextCursor

    from wsiviewer.gui.app import application
    from wsiviewer.gui.main_window import MainWindow

    app = application()
    settings = QSettings(str(Path(data_dir) / "settings.ini"), QSettings.Format.IniFormat)
    if len(args) > 1:
        settings.setValue("model/name", args[1])
    window = MainWindow(settings=settings)
    window.resize(1600, 1000)
    window.show()

    def wait(condition: object, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while not condition() and time.monotonic() < end:  # type: ignore[operator]
            app.processEvents()
            time.sleep(0.02)
        app.processEvents()

    wait(window.isVisible)
    window.about_model_action.trigger()
    dialog = window.model_panel.about_dialog
    assert dialog is not None
    dialog.resize(1000, 1100)
    wait(lambda: not dialog.running)
    wait(lambda: False, 0.5)
    dialog.grab().save(str(out_dir / "about_model.png"))
    browser = dialog.browser
    found = browser.find("Where it does worst")
    if found:
        cursor = browser.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.StartOfBlock)
        browser.setTextCursor(cursor)
        browser.verticalScrollBar().setValue(
            browser.verticalScrollBar().value() + browser.viewport().height() // 2 - 40
        )
        wait(lambda: False, 0.3)
        dialog.grab().save(str(out_dir / "about_model_failures.png"))
    window.show_model()
    wait(lambda: False, 0.3)
    window.model_dock.grab().save(str(out_dir / "model_panel.png"))
    print(dialog.status.text())
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
