"""The review session controller: the Store, the shown region set's state, the reviewer.

:class:`ReviewController` owns what the review panel shows and records, and no widget: the
Store connection (opened on first use), the :class:`~wsiviewer.core.review.log.ReviewState` of
the shown region set with the analysis it belongs to and why it is the one shown, the
reviewer's name (in QSettings), and the
:class:`~wsiviewer.core.review.session.ReviewSession` that records the reviewer's decisions,
opened at the first decision (the name is asked then, through the ``ask_name`` callback).
Every decision (:meth:`ReviewController.apply`) is one committed Store transaction; the
controller keeps no decision of its own, only the state derived from the log after each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QSettings, Signal

from wsiviewer import WsiViewerError

if TYPE_CHECKING:
    from wsiviewer.core.review.log import RegionRef, ReviewState
    from wsiviewer.core.review.session import ReviewSession
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.store.records import RegionSetRecord

#: QSettings key of the reviewer's name.
REVIEWER_KEY = "review/reviewer"


class ReviewController(QObject):
    """The shown region set, its Store and the reviewer's session.

    Signals
    -------
    changed(object, object)
        A decision was recorded: the new :class:`ReviewState`, and the ``RegionRef`` to
        select (``None``: keep the selection).
    failed(str, str)
        Title and message of an error to show the user.
    status_reported(str)
        A short message for the status bar.
    session_started()
        A session was opened (the reviewer's name may have been asked and saved).
    """

    changed = Signal(object, object)
    failed = Signal(str, str)
    status_reported = Signal(str)
    session_started = Signal()

    def __init__(
        self,
        settings: QSettings,
        ask_name: Callable[[], str | None],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._settings = settings
        self._ask_name = ask_name
        self._store: Store | None = None
        self._session: ReviewSession | None = None
        self._state: ReviewState | None = None
        self._analysis_id: int | None = None
        self._reason = ""

    @property
    def state(self) -> ReviewState | None:
        return self._state

    @property
    def session(self) -> ReviewSession | None:
        """The reviewer's session, from the first decision on (``None`` before)."""
        return self._session

    @property
    def analysis_id(self) -> int | None:
        return self._analysis_id

    @property
    def reason(self) -> str:
        """Why the shown set is the one shown (``""``: not said)."""
        return self._reason

    @property
    def reviewed(self) -> bool:
        """Whether the shown region set has any review decision (undone ones included)."""
        if self._state is None:
            return False
        try:
            return bool(self.store().review_decisions(self._state.region_set_id))
        except (WsiViewerError, OSError):
            return False

    def store(self) -> Store:
        """The Store, opened on first use (and again after :meth:`close`)."""
        from wsiviewer.core.store.database import Store

        if self._store is None or self._store.closed:
            self._store = Store.open()
        return self._store

    # -- reviewer ---------------------------------------------------------------------------

    def reviewer(self) -> str | None:
        value = self._settings.value(REVIEWER_KEY)
        return value.strip() if isinstance(value, str) and value.strip() else None

    def set_reviewer(self, name: str) -> None:
        """Record decisions as ``name`` from the next one on."""
        self._settings.setValue(REVIEWER_KEY, name)
        self._session = None  # the next decision opens a session under the new name

    @property
    def has_reviewer(self) -> bool:
        """Whether a session is open or a name is known (else there is nothing to undo)."""
        return self._session is not None or self.reviewer() is not None

    def ensure_session(self) -> ReviewSession | None:
        """The reviewer's session on the shown set, asking the name the first time a decision
        is made; ``None`` if there is no set or the user cancels."""
        if self._session is not None:
            return self._session
        if self._state is None:
            return None
        name = self.reviewer()
        if name is None:
            name = self._ask_name()
            if name is None:
                self.status_reported.emit("No decision recorded: a reviewer name is needed")
                return None
            self._settings.setValue(REVIEWER_KEY, name)
        from wsiviewer.core.review.session import ReviewSession

        try:
            self._session = ReviewSession(self.store(), self._state.region_set_id, name)
        except (WsiViewerError, OSError) as exc:
            self.failed.emit("Cannot start the review", str(exc))
            return None
        self.session_started.emit()
        return self._session

    # -- the shown set ----------------------------------------------------------------------

    def show(
        self, analysis_id: int, region_set: RegionSetRecord, reason: str
    ) -> ReviewState | None:
        """Make ``region_set`` (of ``analysis_id``) the shown set; its state, ``None`` if it
        cannot be read (``failed`` says why; the shown set stays)."""
        from wsiviewer.core.review.log import review_state

        try:
            state = review_state(self.store(), region_set.id)
        except (WsiViewerError, OSError) as exc:
            self.failed.emit("Cannot show the regions", str(exc))
            return None
        self._analysis_id = analysis_id
        self._reason = reason
        if self._session is not None and self._session.region_set_id != region_set.id:
            self._session = None
        self._state = state
        return state

    def region_set_at(
        self, analysis_id: int, threshold: float, min_area_mm2: float
    ) -> RegionSetRecord | None:
        """The analysis's region set at this threshold and minimum area (reused if recorded,
        else computed and saved); ``None`` on error (``failed`` says why)."""
        from wsiviewer.core.review.session import region_set_for

        try:
            return region_set_for(self.store(), analysis_id, threshold, min_area_mm2)
        except (WsiViewerError, OSError, ValueError) as exc:
            self.failed.emit("Cannot open the region set", str(exc))
            return None

    def apply(
        self,
        what: str,
        change: Callable[[ReviewSession], object],
        select: RegionRef | None = None,
    ) -> object:
        """Run one decision in the reviewer's session (asking the name the first time) and
        emit ``changed`` with the new state and ``select``; the decision's result, ``None`` if
        none was recorded (``failed`` says why)."""
        session = self.ensure_session()
        if session is None:
            return None
        try:
            result = change(session)
            state = session.state()
        except (WsiViewerError, OSError, ValueError) as exc:
            self.failed.emit(f"Cannot {what}", str(exc))
            return None
        self._state = state
        self.changed.emit(state, select)
        # A decision that returns nothing was recorded all the same: not the None of failure.
        return True if result is None else result

    def close(self) -> None:
        """Forget the shown set and the session (everything is in the Store); close it."""
        self._session = None
        self._analysis_id = None
        self._reason = ""
        self._state = None
        if self._store is not None:
            self._store.close()
            self._store = None
