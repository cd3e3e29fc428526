"""Review of flagged regions, and which regions are shown at all.

- :mod:`.status`: the review statuses and the one colour of each;
- :mod:`.log`: the review state and history derived from the append-only review log;
- :mod:`.session`: :class:`~.session.ReviewSession`, a reviewer's decisions, each one Store
  transaction; :func:`~.session.open_review`;
- :mod:`.qupath_import`: QuPath GeoJSON annotations imported as manual regions;
- :mod:`.selection`: the selection rule: which analysis, region set and card of a slide the
  viewer shows and ``export`` writes.
"""
