"""Which probability map the window shows, and what it says about it.

A slide's stored analysis and region set are chosen by the selection rule that ``export``
uses too (:mod:`wsiviewer.core.review.selection`); a running analysis shows its partial maps
and then its result. Whatever is shown goes to the slide view, the overview, the heatmap panel
(its histogram and the analysis label) and the review panel together.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, QRectF, Signal

from wsiviewer import WsiViewerError
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.model.cards import ModelCard, available_models

if TYPE_CHECKING:
    from wsiviewer.core.slides import Slide
    from wsiviewer.gui.analysis import AnalysisOutcome
    from wsiviewer.gui.overlay_panel import OverlayPanel
    from wsiviewer.gui.overview import OverviewWidget
    from wsiviewer.gui.review_panel import ReviewPanel
    from wsiviewer.gui.slide_view import SlideView

NO_ANALYSIS_TEXT = "No analysis for this slide yet."


class AnalysisDisplay(QObject):
    """Shows one probability map (or none) everywhere the window shows it.

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
        self._overlay_panel.set_probability_map(None, None)
        self._overlay_panel.analysis_label.setText(NO_ANALYSIS_TEXT)

    # -- what is shown ------------------------------------------------------------------------

    def show_stored(self, slide: Slide, card: ModelCard | None) -> None:
        """The slide's stored analysis and region set chosen by the selection rule, with
        ``card`` as the default model; none when the slide has no analysis."""
        self._shown_analysis_id = None
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
        other = (
            ""
            if card is None or record.model.weights_sha256 == card.weights_sha256
            else " (not the chosen model)"
        )
        self._overlay_panel.analysis_label.setText(
            f"Stored analysis #{record.id}: {html.escape(record.model.name)} "
            f"v{html.escape(record.model.version)}{other}, {record.finished_at}, "
            f"{record.scored_count:,} patches scored on {record.device}, "
            f"{record.mpp.value:.4g} µm/px ({record.mpp.source}); shown: "
            f"{html.escape(selection.reason)}."
        )
        self._shown_analysis_id = record.id
        self._review_panel.show_analysis(record.id, selection.region_set, record.model.threshold)
        self.stored_analysis_shown.emit(record.id)

    def show_running(self, card: ModelCard) -> None:
        self._overlay_panel.analysis_label.setText(
            f"Analysing with {html.escape(card.name)} v{html.escape(card.version)}: the heatmap "
            "fills in as patches are scored. Cancel (Esc) saves nothing."
        )

    def show_finished(self, outcome: AnalysisOutcome) -> None:
        """The analysis the window just ran, its regions opened for review."""
        analysis = outcome.analysis
        pmap = analysis.probability_map
        self.show_map(pmap.grid, pmap.probabilities)
        self._shown_analysis_id = outcome.analysis_id
        self._review_panel.show_analysis(outcome.analysis_id, None, outcome.threshold)
        self._overlay_panel.analysis_label.setText(
            f"Analysis #{outcome.analysis_id}: {html.escape(analysis.model.name)} "
            f"v{html.escape(analysis.model.version)}, {pmap.scored_count:,} patches scored "
            f"on {analysis.device} in {analysis.timings_s.get('total', 0):.1f} s, "
            f"{outcome.region_count} regions flagged at P ≥ {outcome.threshold:.2f}."
        )
