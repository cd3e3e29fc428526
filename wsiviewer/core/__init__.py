"""Core: everything wsiviewer does, without Qt. The CLI, the viewer and batch processing are
front doors over it; they call :mod:`.workflow` and never re-implement a step.

Sub-packages, lowest first (an import-linter ``layers`` contract keeps them in this order):

- :mod:`.slides`: the slide interface, the OpenSlide source, direct TIFF tiles, the array
  source, resampling, the slide label;
- :mod:`.model`: model cards, networks, weights, the ONNX export, inference engines, the
  predictor;
- :mod:`.analysis`: the patch grid (the tiling), tissue detection, patch reading, the
  probability map, regions, the analysis pipeline;
- :mod:`.store`: the SQLite results database (schema and migrations, records, queries);
- :mod:`.review`: review statuses, the review log, review sessions, QuPath import, the
  selection rule;
- :mod:`.exports`: every file we write (GeoJSON, masks, pyramidal TIFF, heatmaps, tables,
  the analysis outputs, the ``export`` command's review outputs, the HTML report);
- :mod:`.workflow`: analyse → regions → Store (→ outputs), what every front door calls.

Beside them, used by all: :mod:`.units` (µm/px, magnification, areas, the level choice),
:mod:`.atomic` (atomic file writes), :mod:`.paths` (the user data directory) and
:mod:`.progress` (driving the progress generators).
"""
