"""The interactive plots: the model's shipped evaluation, and the shown map's histogram."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.colormaps import load_colormap
from wsiviewer.core.model.cards import ModelCard, available_models
from wsiviewer.core.slides import open_slide
from wsiviewer.core.store.database import Store
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.model_panel import ModelPanel

#: Values of the stored map, each in the middle of a 0.02-wide histogram bin, and how many
#: cells have each: bins 10 (0.20–0.22), 27 (0.54–0.56) and 49 (0.98–1.00); NaN is unscored.
MAP_VALUES = {0.21: 30, 0.55: 9, 0.99: 4}


def _store_map(slide_path: Path, card_path: Path) -> np.ndarray:
    """Record an analysis whose map has :data:`MAP_VALUES`, NaN elsewhere; return the map."""
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.tissue import TissueSettings

    card = ModelCard.from_file(card_path)
    with open_slide(slide_path) as slide:
        mpp = slide.mpp
        assert mpp is not None
        grid = PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        flat = np.full(grid.cell_count, np.nan, np.float32)
        start = 0
        for value, count in MAP_VALUES.items():
            flat[start : start + count] = value
            start += count
        probabilities = flat.reshape(grid.shape)
        analysis = Analysis(
            slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
            model=card.summary(),
            tissue_settings=TissueSettings(),
            probability_map=ProbabilityMap(grid, probabilities, np.isfinite(probabilities)),
            device="CPU",
            batch_size=1,
            started_at="2025-01-01T00:00:00+00:00",
        )
    with Store.open() as store:
        store.save_analysis(analysis)
    return probabilities


def test_pyqtgraph_reads_arrays_row_major() -> None:
    assert pg.getConfigOption("imageAxisOrder") == "row-major"


def test_histogram_counts_the_shown_map_and_clears_with_the_slide(
    qtbot: QtBot, window: MainWindow, tiny_model_card: Path, generated_slide: Path
) -> None:
    stored = _store_map(generated_slide, tiny_model_card)
    histogram = window.overlay_panel.histogram
    with qtbot.waitSignal(window.stored_analysis_shown):
        window.open_slide(generated_slide)
    np.testing.assert_array_equal(window.view.probabilities, stored)
    expected = np.zeros(50, dtype=np.int64)
    expected[[10, 27, 49]] = list(MAP_VALUES.values())
    np.testing.assert_array_equal(histogram.counts, expected)
    assert histogram.scored_count == sum(MAP_VALUES.values()) == 43
    # The bars drawn are the counts.
    np.testing.assert_array_equal(histogram.bars.opts["y1"], expected)
    assert "43 patches scored" in histogram.summary_label.text()
    assert histogram.plot_widget.getAxis("left").labelText == "patches"
    assert "200 µm patch" in window.overlay_panel.caption.text()

    window.close_slide()
    assert histogram.scored_count == 0
    assert not histogram.counts.any()
    assert "No scored patches" in histogram.summary_label.text()
    assert "200 µm" not in window.overlay_panel.caption.text()


def test_threshold_line_follows_the_control_and_dragging_it_moves_the_control(
    qtbot: QtBot, window: MainWindow, tiny_model_card: Path, generated_slide: Path
) -> None:
    _store_map(generated_slide, tiny_model_card)
    panel = window.overlay_panel
    histogram = panel.histogram
    with qtbot.waitSignal(window.stored_analysis_shown):
        window.open_slide(generated_slide)

    panel.threshold_slider.setValue(500)
    assert histogram.threshold_line.value() == pytest.approx(0.5)
    assert histogram.above_threshold_count() == 9 + 4
    assert "13 (30.2 %) flagged at P ≥ 0.500" in histogram.summary_label.text()
    panel.threshold_slider.setValue(730)
    assert histogram.threshold_line.value() == pytest.approx(0.73)
    assert histogram.above_threshold_count() == 4
    # Bars below the threshold fade as the heatmap does; the rest take the colour map's.
    brushes = histogram.bars.opts["brushes"]
    viridis = load_colormap("viridis")
    assert brushes[49].getRgb()[:3] == tuple(int(c) for c in viridis[min(255, int(0.99 * 256))])
    assert brushes[27].getRgb()[:3] != tuple(int(c) for c in viridis[int(0.55 * 256)])
    assert brushes[27].lightness() > brushes[49].lightness()

    # Dragging the line (it emits as it moves) sets the control, to 0.001; letting go of it
    # shows the region set at that threshold: one threshold for heatmap and regions.
    with qtbot.waitSignal(panel.style_changed):
        histogram.threshold_line.setValue(0.404)
    assert panel.threshold_slider.value() == 404
    assert panel.threshold == pytest.approx(0.404)
    assert histogram.threshold_line.value() == pytest.approx(0.404)
    assert "at P ≥ 0.404" in histogram.summary_label.text()
    with qtbot.waitSignal(window.review_panel.review_opened):
        histogram.threshold_line.sigPositionChangeFinished.emit(histogram.threshold_line)
    assert window.review_panel.state.threshold == pytest.approx(0.404)  # type: ignore[union-attr]

    histogram.log_box.setChecked(True)
    np.testing.assert_allclose(
        histogram.bars.opts["y1"][[10, 27, 49]], np.log10(list(MAP_VALUES.values()))
    )


def _patients_csv(card: ModelCard) -> list[dict[str, str]]:
    path = card.path.parent / "reports" / card.name / "patients.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.shipped_models
def test_model_plots_carry_the_shipped_card_and_report(qtbot: QtBot) -> None:
    panel = ModelPanel()
    qtbot.addWidget(panel)
    for card in [c for c in available_models() if c.report_path is not None]:
        panel.set_cards([card])
        metrics = card.extra["metrics"]
        # A split's test patients, or cross-validation's out-of-fold scores of every patient.
        main = "test" if "test" in metrics else "out_of_fold"
        rows = _patients_csv(card)
        assert len(rows) == metrics[main]["patients"]
        for plot in panel.plots:
            assert panel.tabs.isTabEnabled(panel.tabs.indexOf(plot))

        roc = panel.roc_plot
        for part in [p for p in ("validation", "test", "out_of_fold") if p in metrics]:
            assert roc.part_points[part] == pytest.approx(
                (1 - metrics[part]["specificity"], metrics[part]["sensitivity"])
            )
        np.testing.assert_allclose(
            roc.patient_points,
            [
                (1 - float(r["specificity"]), float(r["sensitivity"]))
                for r in rows
                # A patient with one class has no sensitivity or no specificity: no point.
                if np.isfinite(float(r["specificity"] or "nan"))
                and np.isfinite(float(r["sensitivity"] or "nan"))
            ],
        )
        legend = [label.text for _, label in roc.legend.items]
        assert any(f"AUC {metrics[main]['roc_auc']:.3f}" in text for text in legend)
        target = card.extra["operating_points"].get("sensitivity_0.90")
        if target is not None:  # chosen on a split's validation patients
            assert any(f"P ≥ {target:.3f}" in text for text in legend)
        if main == "test":
            assert f"P ≥ {card.threshold:.3f}" in roc.caption.text()
        else:  # out of fold: each fold's threshold, chosen on the other folds
            assert "each fold's own threshold" in roc.caption.text()
            assert any("each out of fold patient" in text for text in legend)

        np.testing.assert_allclose(
            panel.calibration_plot.points,
            [(float(r["mean_p_idc"]), float(r["idc_fraction"])) for r in rows],
        )
        assert f"{metrics[main]['ece']:.3f}" in panel.calibration_plot.caption.text()

        aucs = panel.patients_plot.aucs
        assert sorted(aucs, key=lambda pair: pair[1]) == aucs
        expected = {r["patient"]: float(r["roc_auc"] or "nan") for r in rows}
        assert dict(aucs) == pytest.approx({k: v for k, v in expected.items() if np.isfinite(v)})
    notices = [w for w in panel.findChildren(QLabel) if w.objectName() == "research_notice"]
    assert notices
    assert "Research use only" in notices[0].text()


def test_a_model_without_an_evaluation_has_no_plots(
    qtbot: QtBot, window: MainWindow, installed_model: Path
) -> None:
    window.reload_models()
    panel = window.model_panel
    assert panel.card is not None
    for plot in panel.plots:
        assert not panel.tabs.isTabEnabled(panel.tabs.indexOf(plot))
    assert panel.tabs.currentWidget() is panel.card_view


def test_a_malformed_report_table_is_said_in_the_plots(
    qtbot: QtBot, tiny_model_card: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy2(tiny_model_card.with_suffix(".safetensors"), folder)
    card_path = Path(shutil.copy2(tiny_model_card, folder))
    data = json.loads(card_path.read_text())
    data["metrics"] = {"test": {"sensitivity": 0.8, "specificity": 0.7, "patients": 3}}
    card_path.write_text(json.dumps(data))
    report = folder / "reports" / data["name"]
    report.mkdir(parents=True)
    (report / "patients.csv").write_text("patient,patches\n1,10\n")
    panel = ModelPanel()
    qtbot.addWidget(panel)
    panel.set_cards([ModelCard.from_file(card_path)])
    assert panel.evaluation is None
    for plot in panel.plots:
        assert not panel.tabs.isTabEnabled(panel.tabs.indexOf(plot))
        assert "cannot be read" in plot.caption.text()
        assert "idc_fraction" in plot.caption.text()
