"""Before Qt starts: are the system libraries of its platform plugin there?

Without one of them Qt aborts the process (exit 134) with a message about *another* library
("could not load the Qt platform plugin xcb ... no Qt platform plugin could be initialized").
Checked first, the viewer says in one line which library is missing and which Debian/Ubuntu
package has it. No Qt here (nothing of PySide6 is imported): this runs when Qt cannot.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

#: Debian/Ubuntu package of each library the Qt xcb platform plugin and PySide6's Qt libraries
#: load (read off ``/proc/<pid>/maps`` of a running viewer, Debian 12).
SYSTEM_PACKAGES: dict[str, str] = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
}

#: ``ldd`` lines of a library it cannot find: ``libxcb-icccm.so.4 => not found``.
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)
#: The dynamic loader's message for a missing library.
_CANNOT_OPEN = re.compile(r"(\S+\.so[.\d]*): cannot open shared object file")


def missing_message(libraries: Iterable[str]) -> str:
    """One line naming the missing libraries and the packages that hold them."""
    names = list(dict.fromkeys(libraries))
    packages = list(dict.fromkeys(SYSTEM_PACKAGES.get(name, "") for name in names))
    known = [package for package in packages if package]
    unknown = [name for name in names if name not in SYSTEM_PACKAGES]
    line = f"the viewer needs the system library {', '.join(names)}"
    if known:
        line += f" (Debian/Ubuntu: sudo apt-get install {' '.join(known)})"
    if unknown:
        line += f"; find the package of {', '.join(unknown)} with apt-file search"
    return line + "; every command but the viewer works without it"


def libraries_named_in(text: str) -> list[str]:
    """The missing libraries ``ldd`` or the dynamic loader names in ``text``."""
    return [*_NOT_FOUND.findall(text), *_CANNOT_OPEN.findall(text)]


def _xcb_plugin() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or spec.origin is None:
        return None
    plugin = Path(spec.origin).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.is_file() else None


def missing_libraries(plugin: Path | None = None) -> list[str]:
    """The libraries Qt's xcb platform plugin needs and the system lacks (Linux, and only
    when Qt would use xcb); ``[]`` when nothing is missing or it cannot be told."""
    if plugin is None:
        if not sys.platform.startswith("linux"):
            return []
        platform = os.environ.get("QT_QPA_PLATFORM", "")
        if platform and not platform.startswith("xcb"):
            return []  # offscreen, wayland, vnc...: not the xcb plugin's libraries
        plugin = _xcb_plugin()
        if plugin is None:
            return []
    ldd = shutil.which("ldd")
    if ldd is not None:
        try:
            result = subprocess.run(
                [ldd, str(plugin)], capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.SubprocessError):
            result = None
        if result is not None and result.returncode == 0:
            return list(dict.fromkeys(libraries_named_in(result.stdout)))
    try:
        # Without ldd: load the plugin; the loader names the first library it lacks.
        ctypes.CDLL(str(plugin))
    except OSError as exc:
        return libraries_named_in(str(exc))
    return []


def platform_problem() -> str | None:
    """One line saying which system library is missing, or ``None`` if Qt can start."""
    missing = missing_libraries()
    return missing_message(missing) if missing else None
