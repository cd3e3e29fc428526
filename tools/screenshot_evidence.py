"""Screenshots of "Why was this flagged?": the evidence dock with and without saliency (run
under Xvfb).

    xvfb-run -s "-screen 0 1920x1200x24" .venv/bin/python tools/screenshot_evidence.py \
        OUTDIR SLIDE [REGION ...]

A development tool, not part of the installed package. Analyses SLIDE with the installed
default model in a throw-away data folder, then for each REGION label (default: the first two
regions) selects it in the review, opens the evidence (Review › Why was this flagged?) and
saves the window: the patches, Grad-CAM over them, integrated gradients over them, and the
view centred on the first patch after a click. The pictures hold the slide's pixels: keep them
out of the repository when the slide is not ours.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from screenshots import Screenshots, demo_window  # type: ignore[import-not-found]


def _point_screenshots(shots: Screenshots, window: object) -> None:
    """The slide's menu over a scored cell outside every region, then that patch explained."""
    import numpy as np
    from PySide6.QtWidgets import QApplication, QMenu

    view, panel = window.view, window.evidence_panel  # type: ignore[attr-defined]
    grid, probabilities = view.grid, view.probabilities
    state = window.review_panel.state  # type: ignore[attr-defined]
    inside = np.zeros(grid.shape, bool)
    for item in state.items:
        from wsiviewer.core.analysis.probability import ProbabilityMap
        from wsiviewer.core.review.evidence import region_cells

        cells = region_cells(
            ProbabilityMap(grid, probabilities, np.isfinite(probabilities)), item.polygon
        )
        inside[cells[:, 0], cells[:, 1]] = True
    scored = np.isfinite(probabilities) & ~inside
    row, col = np.argwhere(scored)[np.argmax(probabilities[scored])]
    x, y, size, _ = grid.l0_box((int(row), int(col)))
    view.set_magnification(5)
    view.center_on_l0(x + size / 2, y + size / 2)
    shots.wait(lambda: view.settled)
    view_pos = view.mapFromScene(x + size / 2, y + size / 2)
    window._show_view_menu(view_pos)  # type: ignore[attr-defined]
    shots.save("evidence-point-menu", whole_screen=True)
    for menu in QApplication.topLevelWidgets():
        if isinstance(menu, QMenu) and menu.isVisible():
            menu.close()
    window.explain_point(x + size / 2, y + size / 2)  # type: ignore[attr-defined]
    shots.wait(lambda: not panel.busy and panel.evidence is not None, timeout=120)
    panel.set_saliency(True)
    shots.wait(lambda: not panel.busy, timeout=300)
    shots.save("evidence-point-explained")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__)
        return 2
    out_dir, slide_path, labels = Path(args[0]), Path(args[1]), args[2:]
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="wsiviewer-evidence-shots-")
    os.environ["WSIVIEWER_DATA_DIR"] = data_dir

    app, window = demo_window(data_dir)
    shots = Screenshots(app, window, out_dir)
    if not window.open_slide(slide_path) or not window.analyze():
        print(f"cannot open or analyse {slide_path}", file=sys.stderr)
        return 1
    shots.wait(lambda: not window.runner.running, timeout=600)
    shots.wait(lambda: window.review_panel.state is not None and window.view.settled)
    state = window.review_panel.state
    items = {item.label: item for item in state.items}
    labels = labels or [item.label for item in state.items[:2]]
    panel = window.evidence_panel
    for label in labels:
        item = items[label]
        panel.set_saliency(False)
        window.review_panel.select(item.ref)
        window.show_evidence()
        shots.wait(lambda: not panel.busy and panel.evidence is not None, timeout=120)
        shots.wait(lambda: window.view.settled)
        shots.save(f"evidence-region-{label}-patches")
        panel.set_saliency(True)
        shots.wait(lambda: not panel.busy, timeout=300)
        shots.save(f"evidence-region-{label}-gradcam")
        panel.method_box.setCurrentIndex(1)
        shots.save(f"evidence-region-{label}-integrated-gradients")
        if panel.tiles:
            tile = panel.tiles[0]
            x, y, w, h = tile.patch.l0_box
            window.view.set_magnification(10)
            tile.clicked.emit(x + w / 2, y + h / 2)
            shots.wait(lambda: window.view.settled)
            shots.save(f"evidence-region-{label}-centred")
        panel.method_box.setCurrentIndex(0)
    _point_screenshots(shots, window)
    window.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
