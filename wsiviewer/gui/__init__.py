"""The desktop viewer: the only package that imports PySide6, pyqtgraph or superqt.

PySide6-Essentials 6.12.0 is excluded in pyproject.toml: its overloaded ``void`` QPainter
methods drop a reference to ``None`` on every call, which aborts Python 3.11 within seconds of
panning ("none_dealloc"); 6.11 does not.
"""
