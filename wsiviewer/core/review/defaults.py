"""Defaults of a region set that every front door shares (no imports: ``--help`` reads them).

The minimum region area was chosen on the complete IDC patients of the default model's
training and validation patients, never its test patients: ``tools/min_area.py`` prints the
figures behind it, and the README gives them.
"""

from __future__ import annotations

#: Regions smaller than this (mm²) are left out of a region set unless the user picks
#: another minimum: regions of one or two 200 µm patches (0.04 and 0.08 mm²). On the 21
#: complete training and validation patients it left 86 of 282 regions (per patient, median
#: 4 instead of 10, at most 9 instead of 46), dropped 79 % of the regions without an
#: IDC-labelled patch and kept 99.9 % of the flagged IDC patches and 33 of the 35 regions
#: holding any; a larger minimum starts losing regions with IDC (32 at 0.13 mm²).
DEFAULT_MIN_AREA_MM2 = 0.09
