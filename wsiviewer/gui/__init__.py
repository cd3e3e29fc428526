"""The desktop viewer: the only package that imports PySide6, pyqtgraph or superqt."""
