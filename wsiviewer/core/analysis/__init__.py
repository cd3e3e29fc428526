"""Analysis: a slide's tissue tiled into model patches, scored into a probability map, and
grouped into regions.

- :mod:`.grid`: :class:`~.grid.PatchGrid`, the tiling; every conversion between grid cells
  and level-0 px, the level to read, areas;
- :mod:`.tissue`: tissue detection on a low-resolution overview, and the cells to analyse;
- :mod:`.patches`: :class:`~.patches.PatchReader`, model patches for grid cells read in
  large blocks from the right pyramid level;
- :mod:`.prefetch`: reading a batch or two ahead, beside inference;
- :mod:`.probability`: :class:`~.probability.ProbabilityMap`, one P(IDC) per cell;
- :mod:`.regions`: connected cells at or above a threshold, as polygons with measurements;
- :mod:`.pipeline`: :func:`~.pipeline.analyze`, the generator that runs it all.
"""
