"""The viewer's slide probe: a file is opened in a child process before the viewer opens it.

:class:`~wsiviewer.core.slides.probe.SlideProber` (core, no Qt) does the probing; this module
keeps one prober for the application (started when the window is shown, closed at exit) and
remembers verdicts, so a slide already probed opens at once: by the file's resolved path, size
and modification time, hashed (the cache holds no path), in ``slide-probes.json`` in the user
data directory. A file that changes is probed again.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import threading
from pathlib import Path

from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.slides.probe import ProbeVerdict, SlideProber

log = logging.getLogger(__name__)

#: Verdicts kept (the oldest are dropped).
MAX_VERDICTS = 2000
#: File name of the verdict cache in the user data directory.
CACHE_NAME = "slide-probes.json"

_prober: SlideProber | None = None
_prober_lock = threading.Lock()


def shared_prober() -> SlideProber:
    """The application's prober, created on first use and closed at exit."""
    global _prober
    with _prober_lock:
        if _prober is None:
            _prober = SlideProber()
            atexit.register(close_prober)
        return _prober


def close_prober() -> None:
    """Stop the prober's child process (it is started again if needed)."""
    with _prober_lock:
        if _prober is not None:
            _prober.close()


def start_prober() -> None:
    """Start the child now, so that the first slide opened does not wait for its imports."""
    try:
        shared_prober().start()
    except OSError as exc:
        log.warning("The slide probe process cannot start: %s", exc)


def file_key(path: Path) -> str | None:
    """The cache key of a file: a hash of its resolved path, size and modification time."""
    try:
        resolved = path.resolve()
        stat = resolved.stat()
    except OSError:
        return None
    text = f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class VerdictCache:
    """Probe verdicts by :func:`file_key`, in a JSON file (``None``: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._verdicts: dict[str, dict[str, object]] | None = None
        self._lock = threading.Lock()

    def get(self, key: str) -> ProbeVerdict | None:
        with self._lock:
            entry = self._load().get(key)
        if entry is None:
            return None
        try:
            return ProbeVerdict.from_dict(entry)
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, verdict: ProbeVerdict) -> None:
        with self._lock:
            verdicts = self._load()
            verdicts.pop(key, None)
            verdicts[key] = verdict.to_dict()
            while len(verdicts) > MAX_VERDICTS:
                verdicts.pop(next(iter(verdicts)))
            if self.path is not None:
                try:
                    atomic_write_text(self.path, json.dumps(verdicts))
                except OSError as exc:
                    log.warning("Cannot save slide probe verdicts: %s", exc)

    def _load(self) -> dict[str, dict[str, object]]:
        if self._verdicts is None:
            self._verdicts = {}
            if self.path is not None:
                try:
                    loaded = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    loaded = {}
                if isinstance(loaded, dict):
                    self._verdicts = {str(k): v for k, v in loaded.items() if isinstance(v, dict)}
        return self._verdicts


def default_cache() -> VerdictCache:
    """The verdict cache in the user data directory (in memory if it cannot be written)."""
    from wsiviewer.core.paths import data_dir

    try:
        return VerdictCache(data_dir() / CACHE_NAME)
    except OSError:
        return VerdictCache(None)


def probe(path: Path, cache: VerdictCache, prober: SlideProber | None = None) -> ProbeVerdict:
    """The verdict on ``path``: cached, else from the prober (and then cached).

    A verdict that the prober itself could not be started is not cached (and lets the file
    be opened: the probe is a safety net, not a gate the viewer depends on).
    """
    key = file_key(path)
    if key is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached
    try:
        verdict = (prober or shared_prober()).probe(path)
    except OSError as exc:
        log.warning("Slide %s opened without a probe: %s", path.name, exc)
        return ProbeVerdict(True)
    if key is not None:
        cache.put(key, verdict)
    return verdict
