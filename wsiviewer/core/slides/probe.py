"""Probing a slide file in a child process: a native crash there is a verdict, not our death.

OpenSlide and the codecs below it are C libraries: a malformed file can crash them (a
segfault, an abort), and no Python code survives that. The viewer opens files from anywhere,
so before it opens one in its own process, :class:`SlideProber` has a child process open it
and read a few tiles (:func:`probe_slide`: every level's corner, level 0's centre, the
coarsest level whole when small), and returns a :class:`ProbeVerdict`: the slide opened and
read, or our error's message, or the child crashed (with the signal and OpenSlide's last
words), or it did not answer in time.

The child is started once and answers probe after probe (a start costs the imports, about
half a second; a probe of a small slide some tens of ms); after any verdict other than ``ok``
it is replaced by a fresh one, so one damaged file cannot taint the next verdict.

``python -m wsiviewer.core.slides.probe`` is the child: one JSON line per request on stdin
(``{"path": ...}``), one per answer on stdout.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from wsiviewer.errors import escape_control

#: How long a probe may take before the child is killed and the verdict is "did not answer".
PROBE_TIMEOUT_S = 60.0
#: How long the child may take to start (imports).
START_TIMEOUT_S = 60.0
#: The largest coarsest level the probe reads whole (px).
WHOLE_LEVEL_PIXELS = 4_000_000


@dataclass(frozen=True)
class ProbeVerdict:
    """What happened when a child process opened and read a slide."""

    #: The slide opened and its probed tiles read.
    ok: bool
    #: Why not, for the user (our error's message, or what the child's end says).
    message: str = ""
    #: The child died by a signal (a native crash) or did not answer: the file must not be
    #: opened in this process.
    crashed: bool = False
    #: Seconds the probe took (excluding the child's start).
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "message": self.message, "crashed": self.crashed}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ProbeVerdict:
        return cls(bool(data["ok"]), str(data.get("message", "")), bool(data.get("crashed")))


def probe_slide(path: Path) -> None:
    """What the child does with a slide: open it and read a few tiles.

    Raises whatever a slide raises: our errors, or anything else (reported as unexpected).
    """
    from wsiviewer.core.slides.openslide_source import open_slide

    with open_slide(path) as slide:
        slide.describe()
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            slide.read_region((0, 0), level, (min(width, 256), min(height, 256)))
        width, height = slide.dimensions
        slide.read_region((width // 2, height // 2), 0, (256, 256))
        coarsest = slide.level_count - 1
        width, height = slide.level_dimensions[coarsest]
        if width * height <= WHOLE_LEVEL_PIXELS:
            slide.read_region((0, 0), coarsest, (width, height))
        for name in slide.public_associated_image_names():
            slide.associated_image(name)


def _serve() -> int:
    """The child: answer probe requests until stdin closes."""
    import logging
    import warnings

    from wsiviewer.errors import WsiViewerError

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    import wsiviewer.core.slides.openslide_source  # noqa: F401 -- imports before "ready"

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            path = Path(json.loads(line)["path"])
        except (ValueError, KeyError, TypeError):
            print(json.dumps({"ok": False, "message": "bad request"}), flush=True)
            continue
        try:
            probe_slide(path)
            answer: dict[str, object] = {"ok": True}
        except WsiViewerError as exc:
            answer = {"ok": False, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 -- reported to the parent, which decides
            answer = {"ok": False, "message": f"Unexpected error: {type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


class SlideProber:
    """A child process that probes slides (:func:`probe_slide`), started on first use.

    Thread-safe: probes are answered one at a time. Call :meth:`close` when done (the
    viewer does at exit); a child left over dies with its stdin.
    """

    def __init__(
        self,
        *,
        timeout_s: float = PROBE_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
        command: Sequence[str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        #: The child's command line (tests give one that crashes).
        self.command = list(command or [sys.executable, "-m", "wsiviewer.core.slides.probe"])
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child now (it takes about half a second), if it is not running."""
        with self._lock:
            self._ensure_started()

    def probe(self, path: Path) -> ProbeVerdict:
        """Open and read ``path`` in the child; the verdict.

        Raises
        ------
        OSError
            If no child process can be started at all.
        """
        with self._lock:
            process = self._ensure_started()
            assert process.stdin is not None
            started = time.perf_counter()
            try:
                process.stdin.write(json.dumps({"path": os.fsdecode(path)}) + "\n")
                process.stdin.flush()
            except OSError:
                pass  # a child that died meanwhile: its end is the verdict, below
            line = self._read_line(process, self.timeout_s)
            seconds = time.perf_counter() - started
            if not line:
                return self._verdict_of_end(seconds, hung=line is None)
            try:
                answer = json.loads(line)
            except ValueError:
                self._stop(kill=True)
                return ProbeVerdict(False, "The slide probe gave no verdict", True, seconds)
            verdict = ProbeVerdict(
                bool(answer.get("ok")),
                escape_control(str(answer.get("message", ""))),
                False,
                seconds,
            )
            if not verdict.ok:
                self._stop(kill=False)  # a fresh child for the next file
            return verdict

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    # -- the child ---------------------------------------------------------------------------

    def _ensure_started(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop(kill=True)
        self._stderr = tempfile.TemporaryFile()
        process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # a Ctrl-C in the viewer's terminal is not the child's
        )
        self._process = process
        ready = self._read_line(process, self.start_timeout_s)
        if not ready or not json.loads(ready).get("ready"):
            self._stop(kill=True)
            raise OSError("The slide probe process did not start")
        return process

    @staticmethod
    def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str | None:
        """The child's next line; ``""`` if it closed its output (it ended), ``None`` if it
        said nothing within ``timeout_s``."""
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([process.stdout], [], [], remaining)
            if readable:
                return process.stdout.readline()

    def _verdict_of_end(self, seconds: float, *, hung: bool) -> ProbeVerdict:
        """The verdict when the child gave no answer: it ended (crashed), or it hangs and is
        killed."""
        last_words = self._last_words()
        code = self._stop(kill=True)
        if hung:
            message = (
                f"Opening the slide did not finish within {self.timeout_s:g} s (in a separate "
                "process, which was stopped)"
            )
        else:
            if code is not None and code < 0:
                try:
                    how = f"crashed ({signal.Signals(-code).name})"
                except ValueError:
                    how = f"crashed (signal {-code})"
            else:
                how = f"ended unexpectedly (exit status {code})"
            message = f"The slide reader {how} on this file, in a separate process"
            if last_words:
                message += f": {last_words}"
        return ProbeVerdict(False, escape_control(message), True, seconds)

    def _last_words(self) -> str:
        """The last line the child wrote to stderr (OpenSlide's or GLib's message)."""
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            lines = self._stderr.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def _stop(self, *, kill: bool) -> int | None:
        process, self._process = self._process, None
        code: int | None = None
        if process is not None:
            if kill and process.poll() is None:
                process.kill()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            try:
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code


if __name__ == "__main__":
    sys.exit(_serve())
