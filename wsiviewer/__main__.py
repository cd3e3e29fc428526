"""``python -m wsiviewer``: the same entry point as the ``wsiviewer`` command."""

from __future__ import annotations

import sys

from wsiviewer.cli import main

sys.exit(main())
