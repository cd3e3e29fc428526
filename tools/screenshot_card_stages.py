"""Screenshots of what the model card makes the analysis do, for looking at it.

    xvfb-run -s "-screen 0 1920x1200x24" .venv/bin/python tools/screenshot_card_stages.py \
        OUTDIR SLIDE [DENSE_SLIDE [CARD.json]]

A development tool, not part of the installed package. Uses a throw-away data folder and the
installed default model (real analyses): SLIDE analysed as by Analysis › Analyze slide (a
slide unlike the training data shows the warning banner above it), then DENSE_SLIDE (default
SLIDE) analysed with Analysis › Dense heatmap, fitted and zoomed in. CARD (with its weights
beside it) is installed in the throw-away data folder and chosen instead of the default.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def _wait(app: object, condition: object, timeout: float = 600.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():  # type: ignore[operator]
        app.processEvents()  # type: ignore[attr-defined]
        if time.perf_counter() > deadline:
            raise TimeoutError("the window did not get there")
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, slide = Path(argv[0]), Path(argv[1])
    dense_slide = Path(argv[2]) if len(argv) > 2 else slide
    card = Path(argv[3]) if len(argv) > 3 else None
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WSIVIEWER_DATA_DIR"] = tempfile.mkdtemp(prefix="wsiviewer-shots-")
    if card is not None:
        import shutil

        models = Path(os.environ["WSIVIEWER_DATA_DIR"]) / "models"
        models.mkdir()
        shutil.copy(card, models)
        shutil.copy(card.with_suffix(".safetensors"), models)

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from wsiviewer.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    settings = QSettings(
        str(Path(os.environ["WSIVIEWER_DATA_DIR"]) / "s.ini"), QSettings.Format.IniFormat
    )
    window = MainWindow(settings=settings)
    window.resize(1600, 1000)
    window.show()
    if card is not None:
        import json

        window.reload_models(preferred=json.loads(card.read_text())["name"])

    def save(name: str) -> None:
        app.processEvents()
        path = out_dir / f"{name}.png"
        window.grab().save(str(path))
        print(f"saved {path}")

    def analyse(path: Path, dense: bool) -> None:
        window.open_slide(path)
        window.dense_action.setChecked(dense)
        _wait(app, lambda: window.view.settled)
        if not window.analyze():
            raise RuntimeError("the analysis did not start")
        _wait(app, lambda: not window.runner.running)
        window.view.fit()
        _wait(app, lambda: window.shown_analysis_id is not None and window.view.settled)

    analyse(slide, dense=False)
    save("01-analysis-with-warning" if window.warning_banner.isVisible() else "01-analysis")
    analyse(dense_slide, dense=True)
    save("02-dense-fit")
    view = window.view
    view.set_magnification(5 if view.mpp else 1)
    grid, probabilities = view.grid, view.probabilities
    if grid is not None and probabilities is not None:
        import numpy as np

        row, col = np.unravel_index(np.nanargmax(probabilities), probabilities.shape)
        x, y, size, _ = grid.l0_box((int(row), int(col)))
        view.center_on_l0(x + size / 2, y + size / 2)
    _wait(app, lambda: view.settled)
    save("03-dense-zoomed")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
