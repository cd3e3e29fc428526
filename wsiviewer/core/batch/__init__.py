"""Batch analysis: many slides, one task per slide on Dask distributed workers.

The third front door over :mod:`wsiviewer.core.workflow` (``wsiviewer batch`` and the viewer's
case list call it). Workers run the analysis up to the probability map and send back the small
result (map, grid, metadata); the client is the only writer of the Store and of the outputs.

- :mod:`.sources`: slide files, folders searched for every format OpenSlide reads, and text
  files listing slides, resolved to one list of slide paths;
- :mod:`.worker`: what runs on a worker: one slide to its :class:`~.pipeline.Analysis`, with
  the model loaded once per worker process;
- :mod:`.manifest`: one row per slide (status, patches, regions, max P, IDC area, seconds,
  error), the manifest CSV and the summary table;
- :mod:`.runner`: the client: a ``LocalCluster`` or an existing scheduler, the plan (keys,
  labels, what to skip), submission, retries after a worker dies, the Store and the outputs;
- :mod:`.cases`: a slide's analysis and review status from the Store (the case list).

Dask is imported by :mod:`.worker` and :mod:`.runner` only, when a batch runs: the other
commands and the viewer start without it.
"""
