"""The slide probe: a slide opened in a child process, whose crash or hang is a verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import he_like_slide
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.slides.probe import SlideProber

#: A child that starts like the real one, then dies as a native crash does.
CRASHING_CHILD = (
    "import json, os, signal, sys\n"
    "print(json.dumps({'ready': True}), flush=True)\n"
    "sys.stdin.readline()\n"
    "sys.stderr.write('GLib-ERROR **: failed to allocate 8193202506435653365 bytes\\n')\n"
    "sys.stderr.flush()\n"
    "os.kill(os.getpid(), signal.SIGSEGV)\n"
)
#: A child that never answers.
HANGING_CHILD = (
    "import json, sys, time\n"
    "print(json.dumps({'ready': True}), flush=True)\n"
    "sys.stdin.readline()\n"
    "time.sleep(600)\n"
)


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyramid_tiff(
        tmp_path_factory.mktemp("probe") / "slide.tif",
        he_like_slide((600, 800)),
        mpp=0.5,
        downsamples=(1, 4),
    )


def test_verdicts_of_a_good_and_a_bad_file(slide_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    prober = SlideProber()
    try:
        good = prober.probe(slide_file)
        assert good.ok
        assert not good.crashed
        refused = prober.probe(bad)
        assert not refused.ok
        assert not refused.crashed
        assert "bad.svs" in refused.message
        assert prober.probe(slide_file).ok  # a fresh child after the error
    finally:
        prober.close()
    assert not prober.running


def test_a_crash_in_the_child_is_a_verdict(slide_file: Path) -> None:
    prober = SlideProber(command=[sys.executable, "-c", CRASHING_CHILD])
    try:
        verdict = prober.probe(slide_file)
    finally:
        prober.close()
    assert not verdict.ok
    assert verdict.crashed
    assert "crashed (SIGSEGV)" in verdict.message
    assert "failed to allocate" in verdict.message  # the reader's last words


def test_a_hang_in_the_child_is_a_verdict_and_the_child_is_stopped(slide_file: Path) -> None:
    prober = SlideProber(command=[sys.executable, "-c", HANGING_CHILD], timeout_s=1.0)
    try:
        verdict = prober.probe(slide_file)
        assert prober._process is None
    finally:
        prober.close()
    assert verdict.crashed
    assert "did not finish within 1 s" in verdict.message


def test_the_real_child_survives_no_crash_but_reports_what_it_saw(tmp_path: Path) -> None:
    """A classic TIFF whose tile byte counts are typed LONG8 aborts OpenSlide; the child
    refuses it first (a clean verdict, not a crash)."""
    import struct

    import tifffile

    path = write_pyramid_tiff(
        tmp_path / "long8.tif", he_like_slide((300, 400)), mpp=0.5, downsamples=(1, 4)
    )
    with tifffile.TiffFile(path) as tiff:
        offset = tiff.pages[1].tags["TileByteCounts"].offset
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, offset + 2, 16)
    path.write_bytes(bytes(data))
    prober = SlideProber()
    try:
        verdict = prober.probe(path)
    finally:
        prober.close()
    assert not verdict.ok
    assert not verdict.crashed
    assert "malformed TIFF" in verdict.message
