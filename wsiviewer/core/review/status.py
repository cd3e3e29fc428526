"""Review statuses: what a decision sets, and the one colour of each status wherever it is drawn."""

from __future__ import annotations

from typing import Literal

ReviewStatus = Literal["pending", "accepted", "rejected"]


#: Status each status action sets.
STATUS_OF_ACTION: dict[str, ReviewStatus] = {
    "accept": "accepted",
    "reject": "rejected",
    "reset": "pending",
}


#: The colour of each review status wherever it is drawn: the viewer's outlines, the report and
#: the exported GeoJSON. Okabe-Ito vermillion for accepted IDC and sky blue for rejected (told
#: apart by colour-blind readers, and from the viridis heatmap); pending is a neutral dark grey
#: (the viewer draws it white over a dark casing, which reads better on tissue).
STATUS_COLORS: dict[str, tuple[int, int, int]] = {
    "accepted": (213, 94, 0),
    "rejected": (86, 180, 233),
    "pending": (90, 90, 90),
}
