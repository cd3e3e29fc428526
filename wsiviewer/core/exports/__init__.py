"""Every file wsiviewer writes for a user, atomically, with the research-use notice where the
format has room for it and never the slide's file name or path unless asked.

- :mod:`.files`: staged sets of files, atomic single files, summaries without paths;
- :mod:`.png`: the one PNG encoder;
- :mod:`.colormaps`: the heatmap's colour maps;
- :mod:`.geojson`: regions as QuPath-style GeoJSON;
- :mod:`.masks`: IDC masks (pyramidal TIFF in the slide's frame, PNG);
- :mod:`.pyramid_tiff`: the tiled pyramidal TIFF writer (also builds test slides);
- :mod:`.heatmaps`: the probability map coloured, alone and over the slide;
- :mod:`.tables`: the patch table (CSV);
- :mod:`.analysis_outputs`: everything ``analyze`` writes (:func:`.write_outputs`);
- :mod:`.review_outputs`: the ``export`` command: a region set and its review;
- :mod:`.report`: the review report, one self-contained HTML page.
"""
