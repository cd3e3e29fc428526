"""Analysis control: run the chosen model over the open slide from the window.

:class:`AnalysisController` checks that the slide can be analysed (a model is installed, the
µm/px is known or the user enters it, the slide is fine enough for the model), starts the
worker (:class:`~wsiviewer.gui.analysis.AnalysisRunner`), shows its progress in the status bar
and its partial maps on the slide, and hands the result to the window's
:class:`~wsiviewer.gui.analysis_display.AnalysisDisplay`. It uses the window's public API only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject

from wsiviewer.core.analysis.grid import DENSE_SUBDIVISION, PatchGrid
from wsiviewer.core.model.cards import model_dirs
from wsiviewer.core.slides import Mpp, Slide
from wsiviewer.core.units import mpp_from_magnification
from wsiviewer.errors import ResolutionError
from wsiviewer.gui.analysis import AnalysisJob, AnalysisOutcome, AnalysisRunner, AnalysisUpdate

if TYPE_CHECKING:
    from wsiviewer.gui.main_window import MainWindow

#: The µm/px offered when a slide has neither µm/px nor objective power: a 40x scan.
MPP_GUESS = mpp_from_magnification(40.0)

#: Status bar messages for each stage of a run (inference names its counts).
STAGE_MESSAGES = {
    "loading model": "Loading the model…",
    # A slide without a level near the model's resolution is read once into one.
    "reading": "Reading the slide at the model's resolution…",
    "saving": "Saving the analysis…",
}


class AnalysisController(QObject):
    """Starts an analysis of the window's slide and follows it to the end."""

    def __init__(self, window: MainWindow, runner: AnalysisRunner) -> None:
        super().__init__(window)
        self._window = window
        self.runner = runner
        runner.analysis_progressed.connect(self._on_progressed)
        runner.analysis_finished.connect(self._on_finished)
        runner.analysis_failed.connect(self._on_failed)
        runner.analysis_cancelled.connect(self._on_cancelled)
        runner.analysis_warned.connect(self._on_warned)
        runner.stopped.connect(window.update_actions)

    def analyze(self) -> bool:
        """Start analysing the open slide; ``False`` if it did not start."""
        window = self._window
        slide, path = window.slide, window.slide_path
        if slide is None or path is None or self.runner.running:
            return False
        card = window.model_panel.card
        if card is None:
            searched = ", ".join(str(d) for d in model_dirs())
            window.show_error(
                "No model installed",
                "No trained model is installed, so slides cannot be analysed yet. Add a model "
                "(<name>.json + <name>.safetensors) with Model › Add model…, or copy it into "
                f"your models folder ({searched}).",
            )
            return False
        mpp = self.analysis_mpp(slide)
        if mpp is None:
            return False
        try:
            PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        except ResolutionError as exc:
            window.show_error("Cannot analyse this slide", str(exc))
            return False
        dense = window.dense_action.isChecked()
        job = AnalysisJob(
            path,
            card,
            mpp,
            device=window.device,
            batch_size=window.batch_size,
            subdivision=DENSE_SUBDIVISION if dense else 1,
        )
        self.runner.start(job)
        window.display.show_running(card)
        window.progress_bar.setRange(0, 0)
        window.device_label.setText("loading model…")
        window.statusBar().showMessage(
            f"Analysing with {card.name}{' (dense heatmap)' if dense else ''}…"
        )
        window.update_actions()
        return True

    def analysis_mpp(self, slide: Slide) -> Mpp | None:
        """The µm/px to analyse at: the user's, the metadata's, or asked (``None``: cancelled
        or implausible, a dialog said why)."""
        window = self._window
        if window.user_mpp is not None:
            return Mpp(window.user_mpp, "user")
        mpp = slide.mpp
        if mpp is not None and mpp.source == "metadata":
            return mpp
        guess = mpp.value if mpp is not None else MPP_GUESS
        value = window.ask_mpp(guess, guessed_from_power=mpp is not None)
        if value is None:
            return None
        try:
            chosen = (
                mpp if mpp is not None and math.isclose(value, mpp.value) else Mpp(value, "user")
            )
        except ResolutionError as exc:
            window.show_error("Implausible resolution", str(exc))
            return None
        if chosen.source == "user":
            window.set_user_mpp(chosen.value)
        return chosen

    def _job_is_current(self) -> bool:
        job = self.runner.job
        return job is not None and job.slide_path == self._window.slide_path

    def _on_progressed(self, update: AnalysisUpdate) -> None:
        window = self._window
        if update.device:
            window.device_label.setText(f"on {update.device}")
        if update.stage == "tissue":
            window.statusBar().showMessage(f"Tissue found: {update.total:,} patches to score")
        elif update.stage == "inference":
            window.statusBar().showMessage(f"Scoring patches: {update.done:,} / {update.total:,}")
        elif update.stage in STAGE_MESSAGES:
            window.statusBar().showMessage(STAGE_MESSAGES[update.stage])
        if update.total:
            window.progress_bar.setRange(0, update.total)
            window.progress_bar.setValue(update.done)
        if update.grid is not None and update.probabilities is not None and self._job_is_current():
            window.display.show_map(update.grid, update.probabilities)

    def _on_finished(self, outcome: AnalysisOutcome) -> None:
        window = self._window
        analysis = outcome.analysis
        if self._job_is_current():
            window.display.show_finished(outcome)
        notes = " ".join(analysis.warnings)
        window.statusBar().showMessage(
            f"Analysis finished: {analysis.probability_map.scored_count:,} patches, "
            f"{outcome.region_count} regions. {notes}",
            15000,
        )
        window.analysis_finished.emit(outcome)

    def _on_failed(self, message: str) -> None:
        self._window.show_error("Analysis failed", message)
        if self._job_is_current():
            self._window.show_stored_analysis()

    def _on_cancelled(self) -> None:
        self._window.statusBar().showMessage("Analysis cancelled; nothing was saved.", 10000)
        if self._job_is_current():
            self._window.show_stored_analysis()

    def _on_warned(self, text: str) -> None:
        self._window.statusBar().showMessage(text, 8000)
