"""Which probability map and region set the window shows, and what it says about them.

A slide's stored analysis and region set are chosen by the selection rule that ``export``
uses too (:mod:`wsiviewer.core.review.selection`): the set reviewed most recently, else the
latest analysis by the chosen model. Every analysis and region set of the slide stays in the
review panel's history, where the user can switch; a new analysis (Ctrl+R) asks first when the
set shown has been reviewed, and the review stays a click away.

Whatever is shown goes to the slide view, the overview, the heatmap panel (its histogram,
threshold and the analysis label) and the review panel together. The threshold is one value:
the shown region set's (the card's operating point unless the user picks another), for the
heatmap's ramp and the regions alike.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, QRectF, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from wsiviewer import WsiViewerError
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.model.cards import ModelCard, available_models
from wsiviewer.core.review.wording import flagged_text, scored_text

if TYPE_CHECKING:
    from wsiviewer.core.review.log import ReviewState
    from wsiviewer.core.slides import Slide
    from wsiviewer.core.store.records import AnalysisRecord
    from wsiviewer.gui.analysis import AnalysisOutcome
    from wsiviewer.gui.overlay_panel import OverlayPanel
    from wsiviewer.gui.overview import OverviewWidget
    from wsiviewer.gui.review_panel import ReviewPanel
    from wsiviewer.gui.slide_view import SlideView

NO_ANALYSIS_TEXT = "No analysis for this slide yet."


class AnalysisDisplay(QObject):
    """Shows one probability map (or none) and its region set everywhere the window does.

    Signals
    -------
    stored_analysis_shown(int)
        The heatmap of Store analysis id is shown.
    map_shown()
        Another map (or none) is shown: what was read at the cursor is stale.
    user_mpp_recalled(float)
        The shown analysis of a slide without µm/px used this value, entered by the user.
    status_reported(str, int)
        A message for the status bar, and how long to show it (ms).
    """

    stored_analysis_shown = Signal(int)
    map_shown = Signal()
    user_mpp_recalled = Signal(float)
    status_reported = Signal(str, int)
    #: The warnings of the analysis shown (a slide unlike the training data, no tissue, ...);
    #: an empty list when none is shown or it has none.
    warnings_shown = Signal(list)

    def __init__(
        self,
        view: SlideView,
        overview: OverviewWidget,
        overlay_panel: OverlayPanel,
        review_panel: ReviewPanel,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._view = view
        self._overview = overview
        self._overlay_panel = overlay_panel
        self._review_panel = review_panel
        self._shown_analysis_id: int | None = None
        self._slide_identity: str | None = None
        self._card: ModelCard | None = None
        overlay_panel.threshold_chosen.connect(self._on_threshold_chosen)
        review_panel.review_opened.connect(self._on_review_opened)
        # After every decision too: the history says how far each set is reviewed.
        review_panel.review_changed.connect(lambda _state: self.refresh_history())
        review_panel.history_chosen.connect(self.show_from_history)

    @property
    def shown_analysis_id(self) -> int | None:
        """The Store id of the analysis shown, ``None`` while none (or a partial map) is."""
        return self._shown_analysis_id

    # -- the map ------------------------------------------------------------------------------

    def show_map(self, grid: PatchGrid, probabilities: np.ndarray) -> None:
        """Show a (possibly partial) probability map."""
        self._view.set_probability_map(grid, probabilities)
        self._overlay_panel.set_probability_map(grid, probabilities)
        self.map_shown.emit()
        self.refresh_overview()

    def clear_map(self) -> None:
        self.warnings_shown.emit([])
        self._view.clear_probability_map()
        self._overlay_panel.set_probability_map(None, None)
        self.map_shown.emit()
        self.refresh_overview()

    def apply_style(self) -> None:
        """The heatmap panel's colour map, threshold, opacity and visibility, everywhere."""
        panel = self._overlay_panel
        self._view.set_heatmap_style(
            colormap=panel.colormap,
            threshold=panel.threshold,
            opacity=panel.opacity,
            visible=panel.visible,
        )
        self.refresh_overview()

    def refresh_overview(self) -> None:
        grid = self._view.grid
        image = self._view.heatmap_thumbnail() if self._overlay_panel.visible else None
        if grid is None or image is None:
            self._overview.set_heatmap(None, QRectF(), 0.0)
            return
        self._overview.set_heatmap(
            image, QRectF(0.0, 0.0, *grid.l0_extent), self._overlay_panel.opacity
        )

    def forget(self) -> None:
        """The slide closed: nothing is shown (the view clears its own map)."""
        self._shown_analysis_id = None
        self._slide_identity = None
        self.warnings_shown.emit([])
        self._overlay_panel.set_probability_map(None, None)
        self._overlay_panel.analysis_label.setText(NO_ANALYSIS_TEXT)

    # -- the threshold: one value, the region set's -----------------------------------------

    def _on_review_opened(self, state: ReviewState) -> None:
        card_threshold = None if self._card is None else self._card.threshold
        record = self._analysis_record(state.analysis_id)
        if record is not None:
            card_threshold = record.model.threshold
        self._overlay_panel.set_threshold(state.threshold, card_threshold=card_threshold)

    def _on_threshold_chosen(self, threshold: float) -> None:
        if self._review_panel.state is None:
            self.apply_style()  # a map without a set yet (running): the heatmap alone
            return
        self._review_panel.set_threshold(threshold)

    # -- what is shown ------------------------------------------------------------------------

    def show_stored(self, slide: Slide, card: ModelCard | None) -> None:
        """The slide's stored analysis and region set chosen by the selection rule, with
        ``card`` as the default model; none when the slide has no analysis."""
        self._shown_analysis_id = None
        self._slide_identity = slide.identity
        self._card = card
        from wsiviewer.core.review.selection import select
        from wsiviewer.core.store.database import Store

        try:
            with Store.open() as store:
                selection = select(
                    store, slide.identity, default_card=card, cards=available_models()
                )
                probability_map = (
                    None if selection is None else store.load_probability_map(selection.analysis)
                )
        except (WsiViewerError, OSError) as exc:
            self.status_reported.emit(f"Stored analyses cannot be read: {exc}", 10_000)
            return
        if selection is None or probability_map is None:
            self._review_panel.close_review()
            self.clear_map()
            self._overlay_panel.analysis_label.setText(
                "No analysis for this slide yet: Analysis › Analyze slide (Ctrl+R)."
            )
            return
        record = selection.analysis
        if slide.mpp is None and record.mpp.source == "user":
            self.user_mpp_recalled.emit(record.mpp.value)
        self.show_map(probability_map.grid, probability_map.probabilities)
        self.warnings_shown.emit(list(record.warnings))
        self._label_stored(record, selection.reason)
        self._shown_analysis_id = record.id
        self._review_panel.show_analysis(
            record.id, selection.region_set, record.model.threshold, reason=selection.reason
        )
        self.stored_analysis_shown.emit(record.id)

    def show_from_history(self, analysis_id: int, region_set_id: int) -> bool:
        """Show an analysis and one of its region sets (``-1``: its first, computed at the
        card's threshold), as chosen in the history."""
        from wsiviewer.core.store.database import Store

        try:
            with Store.open() as store:
                record = store.analysis(analysis_id)
                probability_map = store.load_probability_map(record)
                region_set = None if region_set_id < 0 else store.region_set(region_set_id)
        except (WsiViewerError, OSError) as exc:
            self.status_reported.emit(f"Cannot show analysis {analysis_id}: {exc}", 10_000)
            return False
        self.show_map(probability_map.grid, probability_map.probabilities)
        self.warnings_shown.emit(list(record.warnings))
        reason = "chosen in the history"
        self._label_stored(record, reason)
        self._shown_analysis_id = record.id
        self._review_panel.show_analysis(
            record.id, region_set, record.model.threshold, reason=reason
        )
        self.stored_analysis_shown.emit(record.id)
        return True

    def _label_stored(self, record: AnalysisRecord, reason: str) -> None:
        card = self._card
        other = (
            ""
            if card is None or record.model.weights_sha256 == card.weights_sha256
            else " (not the chosen model)"
        )
        self._overlay_panel.analysis_label.setText(
            f"Stored analysis #{record.id}: {html.escape(record.model.name)} "
            f"v{html.escape(record.model.version)}{other}, {record.finished_at}, "
            f"{scored_text(record.scored_count, record.grid.subdivision)} on {record.device}, "
            f"{record.mpp.value:.4g} µm/px ({record.mpp.source}); shown: "
            f"{html.escape(reason)}."
        )

    def _analysis_record(self, analysis_id: int) -> AnalysisRecord | None:
        from wsiviewer.core.store.database import Store

        try:
            with Store.open() as store:
                return store.analysis(analysis_id)
        except (WsiViewerError, OSError):
            return None

    def refresh_history(self) -> None:
        """List every analysis and region set of the slide in the review panel."""
        if self._slide_identity is None:
            return
        from wsiviewer.core.review.selection import slide_history
        from wsiviewer.core.store.database import Store

        try:
            with Store.open() as store:
                entries = slide_history(store, self._slide_identity)
        except (WsiViewerError, OSError) as exc:
            self.status_reported.emit(f"The slide's history cannot be read: {exc}", 10_000)
            return
        self._review_panel.set_history(entries)

    # -- a new analysis ---------------------------------------------------------------------

    def confirm_reanalysis(self, parent: QWidget) -> bool:
        """Before a new analysis replaces the view of a reviewed region set: say so, and that
        the review stays in the history; ``True`` to go on."""
        state = self._review_panel.state
        if state is None or not self._review_panel.reviewed:
            return True
        return self.ask_reanalysis(
            parent,
            f"The region set shown (#{state.region_set_id}) has been reviewed: "
            f"{state.progress_text}.\n\nA new analysis will be shown instead, unreviewed. "
            "The review is kept: it stays in the review panel's history (Shown), and "
            "`wsiviewer export` keeps exporting the set reviewed most recently until the new "
            "one is reviewed.\n\nAnalyse again?",
        )

    def ask_reanalysis(self, parent: QWidget, text: str) -> bool:
        """Ask whether to analyse again; tests replace this."""
        return reanalysis_box(parent, text).exec() == QMessageBox.StandardButton.Yes

    def show_running(self, card: ModelCard) -> None:
        self._card = card
        # The outlines of another analysis would lie over the new map as it fills in.
        self._review_panel.close_review()
        self.warnings_shown.emit([])
        self._overlay_panel.set_threshold(card.threshold, card_threshold=card.threshold)
        self._overlay_panel.analysis_label.setText(
            f"Analysing with {html.escape(card.name)} v{html.escape(card.version)}: the heatmap "
            "fills in as patches are scored. Cancel (Esc) saves nothing."
        )

    def show_finished(self, outcome: AnalysisOutcome) -> None:
        """The analysis the window just ran, its regions shown for review."""
        from wsiviewer.core.store.database import Store

        analysis = outcome.analysis
        pmap = analysis.probability_map
        self._slide_identity = analysis.slide.identity
        self.show_map(pmap.grid, pmap.probabilities)
        self.warnings_shown.emit(list(analysis.warnings))
        self._shown_analysis_id = outcome.analysis_id
        try:
            with Store.open() as store:
                region_set = store.region_set(outcome.region_set_id)
        except (WsiViewerError, OSError):
            region_set = None
        self._review_panel.show_analysis(
            outcome.analysis_id,
            region_set,
            analysis.model.threshold,
            reason="the analysis just run",
        )
        self._overlay_panel.analysis_label.setText(
            f"Analysis #{outcome.analysis_id}: {html.escape(analysis.model.name)} "
            f"v{html.escape(analysis.model.version)}, "
            f"{scored_text(pmap.scored_count, pmap.grid.subdivision)} on {analysis.device} "
            f"in {analysis.timings_s.get('total', 0):.1f} s, "
            f"{flagged_text(outcome.region_count, outcome.threshold)}. Earlier analyses and "
            "reviews are in the review panel's history."
        )


def reanalysis_box(parent: QWidget, text: str) -> QMessageBox:
    """The question asked before a new analysis replaces a reviewed view."""
    box = QMessageBox(
        QMessageBox.Icon.Question,
        "Analyse a reviewed slide again?",
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        parent,
    )
    box.button(QMessageBox.StandardButton.Yes).setText("Analyse again")
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    return box
