"""Viewer speed on a large 40x slide: prints a table, asserts nothing.

    python benchmarks/viewer.py [SLIDE] [--tour-seconds 60]

Default slide: ``/tmp/rebuilt/8975.svs`` (58,112 x 42,944 px at 0.25 µm/px). Without it, an
equally large Aperio-style pyramid is generated in a temporary folder from a small synthetic
H&E-like image (``write_pyramid_tiff`` + ``UpsampledSource``).

Runs under ``QT_QPA_PLATFORM=offscreen`` (set here unless already set): the figures are the
viewer's own work (reading, decoding, painting), not a display server's. Measures, in order:

- app start to visible window (a fresh ``python`` process, median of 3);
- open to first frame (slide opened, base level read, first paint), and to a sharp fit view;
- a cold 1920x1080 viewport refill at new places, at 40x, 10x (native levels) and 5x
  (between levels), median of 8 each;
- panning over cached tiles: one frame is a scroll step and a synchronous repaint;
- a scripted tour of pans and zooms, then the peak RSS of the process (before the baseline);
- openslide's own ``DeepZoomGenerator`` tile rate in the same run, as the baseline.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_SLIDE = Path("/tmp/rebuilt/8975.svs")
VIEWPORT = (1920, 1080)


def generate_slide(folder: Path) -> Path:
    """A 58,080 x 43,200 px 40x Aperio-style pyramid from a small synthetic H&E-like image."""
    from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
    from wsiviewer.core.slides.synthetic import he_like_slide

    small = he_like_slide((2700, 3630), seed=1)
    source = UpsampledSource(small, 16)
    path = folder / "generated-40x.svs"
    print(f"Generating {source.l0_size[0]} x {source.l0_size[1]} px pyramid at {path} ...")
    return write_pyramid_tiff(
        path, source, mpp=0.25, downsamples=(1, 4, 16, 64), style="aperio", objective_power=40
    )


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    current = 0.0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


def time_startup(runs: int = 3) -> float:
    """Median seconds from launching ``python`` to the main window being visible."""
    code = (
        "from wsiviewer.gui.app import application\n"
        "from wsiviewer.gui.main_window import MainWindow\n"
        "app = application()\n"
        "window = MainWindow()\n"
        "window.show()\n"
        "app.processEvents()\n"
        "print('visible' if window.isVisible() else 'hidden', flush=True)\n"
        "window.close()\n"
    )
    times = []
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "WSIVIEWER_DATA_DIR": data_dir}
        for _ in range(runs):
            t0 = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env
            )
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            elapsed = time.perf_counter() - t0
            process.wait()
            if line != "visible":
                raise RuntimeError(f"startup probe printed {line!r}")
            times.append(elapsed)
    return statistics.median(times)


class Bench:
    def __init__(self, slide_path: Path) -> None:
        from PySide6.QtCore import QSettings

        from wsiviewer.gui.app import application
        from wsiviewer.gui.main_window import MainWindow

        self.app = application()
        self.settings_dir = tempfile.TemporaryDirectory()
        settings = QSettings(
            str(Path(self.settings_dir.name) / "s.ini"), QSettings.Format.IniFormat
        )
        self.window = MainWindow(settings=settings)
        self.view = self.window.view
        self.slide_path = slide_path
        self.window.show()
        self._size_viewport()

    def _size_viewport(self) -> None:
        self.window.resize(VIEWPORT[0] + 420, VIEWPORT[1] + 120)
        self.app.processEvents()
        for _ in range(3):
            viewport = self.view.viewport().size()
            dw, dh = VIEWPORT[0] - viewport.width(), VIEWPORT[1] - viewport.height()
            if not (dw or dh):
                break
            self.window.resize(self.window.width() + dw, self.window.height() + dh)
            self.app.processEvents()

    def settle(self, timeout: float = 30.0) -> None:
        deadline = time.perf_counter() + timeout
        while not self.view.settled:
            self.app.processEvents()
            if time.perf_counter() > deadline:
                raise TimeoutError("tiles did not arrive")
            time.sleep(0.0005)
        self.app.processEvents()

    def frame(self) -> None:
        self.view.viewport().repaint()

    def open_to_first_frame(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        if not self.window.open_slide(self.slide_path):
            raise RuntimeError(f"cannot open {self.slide_path}")
        self.frame()
        first = time.perf_counter() - t0
        self.settle()
        self.frame()
        return first, time.perf_counter() - t0

    def cold_refills(self, magnification: float, places: int, rng: random.Random) -> list[float]:
        width, height = self.view.slide.dimensions  # type: ignore[union-attr]
        self.view.set_magnification(magnification)
        self.settle()
        times = []
        for _ in range(places):
            # A place far from everything seen so far: nothing of it is cached.
            self.view.loader.cache.clear()
            l0_x = rng.uniform(0.2, 0.8) * width
            l0_y = rng.uniform(0.2, 0.8) * height
            t0 = time.perf_counter()
            self.view.center_on_l0(l0_x, l0_y)
            self.settle()
            self.frame()
            times.append(time.perf_counter() - t0)
        return times

    def cached_pan(self, magnification: float, steps: int = 120) -> list[float]:
        self.view.set_magnification(magnification)
        centre = self.view.view_center_l0()
        span = self.view.l0_per_screen_px * 600
        # Visit the area first, so every pan frame below is over cached tiles.
        for dx in (-span, 0, span):
            self.view.center_on_l0(centre.x() + dx, centre.y())
            self.settle()
        self.view.center_on_l0(centre.x() - span, centre.y())
        self.settle()
        horizontal = self.view.horizontalScrollBar()
        times = []
        step = round(2 * 600 / (steps / 2))
        for i in range(steps):
            direction = 1 if i < steps // 2 else -1
            t0 = time.perf_counter()
            horizontal.setValue(horizontal.value() + direction * step)
            self.frame()
            times.append(time.perf_counter() - t0)
        return times

    def tour(self, seconds: float, rng: random.Random) -> tuple[int, int]:
        """Pans and zooms as a user would: drags, wheel zooms, jumps; tiles keep loading."""
        from PySide6.QtCore import QPointF

        end = time.perf_counter() + seconds
        frames = 0
        width, height = self.view.slide.dimensions  # type: ignore[union-attr]
        self.view.set_magnification(10)
        while time.perf_counter() < end:
            action = rng.random()
            if action < 0.7:
                dx, dy = rng.choice([(40, 0), (-40, 0), (0, 40), (0, -40), (30, 30)])
                for _ in range(20):
                    self.view.horizontalScrollBar().setValue(
                        self.view.horizontalScrollBar().value() + dx
                    )
                    self.view.verticalScrollBar().setValue(
                        self.view.verticalScrollBar().value() + dy
                    )
                    self.frame()
                    self.app.processEvents()
                    frames += 1
            elif action < 0.9:
                pos = QPointF(
                    rng.uniform(200, VIEWPORT[0] - 200), rng.uniform(200, VIEWPORT[1] - 200)
                )
                self.view.zoom(rng.choice([1.25, 1.5625, 0.8, 0.64]), pos)
                self.frame()
                frames += 1
            else:
                self.view.set_magnification(rng.choice([2.5, 5.0, 10.0, 20.0, 40.0]))
                self.view.center_on_l0(rng.uniform(0, width), rng.uniform(0, height))
                self.frame()
                frames += 1
            self.app.processEvents()
        self.settle()
        return frames, len(self.view.loader.cache)

    def close(self) -> None:
        self.window.close()
        self.settings_dir.cleanup()


def deepzoom_baseline(slide_path: Path, rng: random.Random, tiles: int = 120) -> dict[str, float]:
    """openslide's DeepZoomGenerator: 254 px tiles with 1 px overlap, as served to viewers."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    with openslide.OpenSlide(slide_path) as osr:
        dz = DeepZoomGenerator(osr, tile_size=254, overlap=1, limit_bounds=False)
        level = dz.level_count - 1  # full resolution
        cols, rows = dz.level_tiles[level]
        coords = [
            (rng.randrange(cols // 5, 4 * cols // 5), rng.randrange(rows // 5, 4 * rows // 5))
            for _ in range(tiles)
        ]
        t0 = time.perf_counter()
        for address in coords:
            dz.get_tile(level, address)
        elapsed = time.perf_counter() - t0
    per_tile = elapsed / tiles
    per_viewport = (math.ceil(VIEWPORT[0] / 254) + 1) * (math.ceil(VIEWPORT[1] / 254) + 1)
    return {
        "tiles_per_s": tiles / elapsed,
        "ms_per_tile": 1000 * per_tile,
        "viewport_tiles": per_viewport,
        "viewport_ms": 1000 * per_tile * per_viewport,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slide", type=Path, nargs="?", default=DEFAULT_SLIDE)
    parser.add_argument("--tour-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    temp = None
    slide_path: Path = args.slide
    if not slide_path.exists():
        temp = tempfile.TemporaryDirectory()
        slide_path = generate_slide(Path(temp.name))
    rng = random.Random(args.seed)
    os.environ.setdefault("WSIVIEWER_DATA_DIR", tempfile.mkdtemp(prefix="wsiviewer-bench-"))

    rows: list[tuple[str, str, str]] = []
    startup = time_startup()
    rows.append(
        ("app start → visible window (median of 3)", f"{startup * 1000:.0f} ms", "≤ 1500 ms")
    )

    bench = Bench(slide_path)
    first, sharp = bench.open_to_first_frame()
    slide = bench.view.slide
    assert slide is not None
    rows.append(("open → first frame", f"{first * 1000:.0f} ms", "≤ 250 ms"))
    rows.append(("open → every fit-view tile sharp", f"{sharp * 1000:.0f} ms", "-"))
    for magnification in (40.0, 10.0, 5.0):
        times = bench.cold_refills(magnification, 8, rng)
        level, reduction = bench.view.target_grid
        served = f"level {level}" + (f" ÷{reduction}" if reduction > 1 else "")
        rows.append(
            (
                f"cold 1920×1080 refill at {magnification:g}x ({served}), median / max",
                f"{statistics.median(times) * 1000:.0f} / {max(times) * 1000:.0f} ms",
                "≤ 100 ms median",
            )
        )
    for magnification in (10.0, 5.0):
        pan = bench.cached_pan(magnification)
        pan_sorted = sorted(pan)
        p95 = pan_sorted[int(0.95 * (len(pan_sorted) - 1))]
        rows.append(
            (
                f"pan over cached tiles at {magnification:g}x, median / p95 per frame",
                f"{statistics.median(pan) * 1000:.1f} / {p95 * 1000:.1f} ms",
                "≤ 16 ms",
            )
        )
    frames, cached = bench.tour(args.tour_seconds, rng)
    current, peak = rss_mb()
    rows.append(
        (
            f"{args.tour_seconds:g} s tour ({frames} frames): RSS now / peak",
            f"{current:.0f} / {peak:.0f} MiB",
            "peak ≤ 1024 MiB",
        )
    )
    rows.append(
        (
            "tile cache after the tour",
            f"{cached} tiles, {bench.view.loader.cache.bytes / 2**20:.0f} MiB",
            f"≤ {bench.view.loader.cache.max_bytes / 2**20:.0f} MiB",
        )
    )
    bench.close()

    baseline = deepzoom_baseline(slide_path, rng)
    rows.append(
        (
            "baseline: DeepZoomGenerator 254 px tiles, level 0, 1 thread",
            f"{baseline['tiles_per_s']:.0f} tiles/s ({baseline['ms_per_tile']:.1f} ms each)",
            "-",
        )
    )
    rows.append(
        (
            f"baseline: DeepZoom 1920×1080 refill ({baseline['viewport_tiles']:.0f} tiles, serial)",
            f"{baseline['viewport_ms']:.0f} ms",
            "-",
        )
    )

    width, height = slide.dimensions
    print()
    print(
        f"Slide: {slide_path.name}, {width:,} × {height:,} px, {slide.level_count} levels "
        f"{[round(d) for d in slide.level_downsamples]}, {os.cpu_count()} CPUs, "
        f"QT_QPA_PLATFORM={os.environ['QT_QPA_PLATFORM']}"
    )
    name_width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"| {'measure'.ljust(name_width)} | {'result'.ljust(value_width)} | target |")
    print(f"|{'-' * (name_width + 2)}|{'-' * (value_width + 2)}|--------|")
    for name, value, target in rows:
        print(f"| {name.ljust(name_width)} | {value.ljust(value_width)} | {target} |")
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
