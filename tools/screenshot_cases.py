"""Screenshots of the case list (File › Open folder…) and its "Analyze all", for looking at it.

    xvfb-run -s "-screen 0 1920x1200x24" .venv/bin/python tools/screenshot_cases.py OUTDIR \
        SLIDE_FOLDER

A development tool, not part of the installed package. Uses a throw-away data folder and the
installed default model (real analyses). The first two slides of the folder are analysed
first and given review decisions (all regions accepted; one region accepted), so the list shows
every status; then "Analyze all" runs on a local cluster and the window is captured while it
runs (some slides analysed, one analysing, the rest queued), when it is done, and sorted by
max P. Slides of a few thousand patches (``benchmarks/batch.py --workdir DIR`` builds some in
``DIR/slides``) leave time to see a slide being analysed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def _wait(app: object, condition: object, timeout: float = 300.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():  # type: ignore[operator]
        app.processEvents()  # type: ignore[attr-defined]
        if time.perf_counter() > deadline:
            raise TimeoutError("the case list did not get there")
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.02)


def _prepare(slides: list[Path]) -> None:
    """Analyse the first two slides and review them: all accepted, and one region accepted."""
    from wsiviewer.core.batch.runner import BatchRun, BatchSettings
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.store.database import Store

    with Store.open() as store:
        report = BatchRun(slides[:2], BatchSettings(card=resolve_model(None), workers=1), store)
        rows = report.run().rows
        for row, decided in zip(rows, (None, 1), strict=True):
            if row.analysis_id is None:
                continue
            (region_set,) = store.region_sets(row.analysis_id)
            for region in store.regions(region_set.id)[:decided]:
                store.record_review_decision(
                    region_set.id, "accept", "screenshots", region_id=region.id
                )


def main() -> None:
    out_dir, folder = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WSIVIEWER_DATA_DIR"] = tempfile.mkdtemp(prefix="wsiviewer-cases-")
    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtWidgets import QApplication

    from wsiviewer.core.batch.sources import search_folder
    from wsiviewer.gui.case_list import MAX_P_COLUMN
    from wsiviewer.gui.main_window import MainWindow

    slides = search_folder(folder)
    _prepare(slides)
    app = QApplication.instance() or QApplication(sys.argv)
    settings = QSettings(
        str(Path(os.environ["WSIVIEWER_DATA_DIR"]) / "s.ini"), QSettings.Format.IniFormat
    )
    window = MainWindow(settings)
    window.resize(1600, 1000)
    window.show()
    panel = window.case_list
    loaded: list[bool] = []
    panel.statuses_loaded.connect(lambda: loaded.append(True))
    window.open_folder(folder)
    _wait(app, lambda: loaded)
    window.resizeDocks([window.cases_dock], [620], Qt.Orientation.Horizontal)
    window.open_slide(slides[0])
    _wait(app, lambda: window.view.settled, 30)
    window.grab().save(str(out_dir / "cases-statuses.png"))

    finished: list[object] = []
    panel.batch_finished.connect(finished.append)
    panel.analyze_all()

    def live() -> bool:
        texts = [entry.status_text for entry in panel.model.entries]
        waiting = any(t in {"queued", "waiting"} for t in texts)
        return any(t.startswith("analysing") for t in texts) and waiting

    _wait(app, live)
    time.sleep(1.0)
    _wait(app, live)
    window.grab().save(str(out_dir / "cases-analyze-all.png"))
    _wait(app, lambda: finished)
    window.grab().save(str(out_dir / "cases-finished.png"))
    panel.table.sortByColumn(MAX_P_COLUMN, Qt.SortOrder.DescendingOrder)
    _wait(app, lambda: True)
    window.grab().save(str(out_dir / "cases-sorted-by-max-p.png"))
    window.close()
    print(f"Screenshots in {out_dir}")


if __name__ == "__main__":
    main()
