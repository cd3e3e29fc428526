"""The results database (:class:`~.database.Store`): analyses, maps, region sets, review log."""
