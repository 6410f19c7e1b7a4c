"""TUI start-up and feature-detail latency on a ~1M-token / 65k-latent synthetic study.

    python bench/bench_tui.py [--study /tmp/refusal_tui_bench/study_1m.h5] [--latents 12] [--runs 3]

Builds the study once (about 5 minutes and 3.3 GB of memory on 2 shared cores; reused
afterwards), then measures, headless (``App.run_test``, an 80×24 terminal):
  1. start-up to first paint: from spawning ``python`` to the overview painted with the study's
     contents (a fresh process each run, so imports count), and in-process from ``build_app``;
  2. the feature table: from key ``2`` to the 65,536-row table painted, sorted by cosine;
  3. feature detail: from ``enter`` / go-to-latent to the detail painted (header, histogram,
     logit lens and the ten top-activating prompts with highlighted tokens; the read is
     done in a worker before the screen is pushed, so this is click → painted), for random latents
     (cold: never opened before) plus the planted refusal latents (which fire on ~74k tokens).
Targets (issue 6): first paint < 1 s, feature detail < 100 ms after the first paint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import SyntheticConfig, make_synthetic_study  # noqa: E402

CONFIG = SyntheticConfig(
    n_prompts=48_800, words_per_prompt=(6, 20), d_sae=65536, active_per_token=50, batch_prompts=4096,
)
"""~1.0M tokens (20.5 per prompt on average), 65,536 latents, ~50 active per token."""
SIZE = (80, 24)
PLANTED = (3, 17, 42)


def ensure_study(path: Path) -> Path:
    marker = path.with_suffix(".config.json")
    wanted = json.dumps(CONFIG.__dict__, default=list, sort_keys=True)
    if not path.exists() or not marker.exists() or marker.read_text() != wanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        make_synthetic_study(path, CONFIG)
        marker.write_text(wanted)
        print(f"built {path} in {time.perf_counter() - started:.0f} s")
    return path


async def wait_until(pilot: object, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Yield to the app until ``condition`` holds, then let it paint."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the view never appeared")
        await asyncio.sleep(0.001)
    await pilot.pause()  # type: ignore[attr-defined]


def overview_painted(app: object) -> bool:
    from textual.widgets import Static

    screen = app.screen  # type: ignore[attr-defined]
    found = screen.query("#ov-analyses")
    return bool(found) and bool(str(found.first(Static).content))


async def startup_child(path: Path, spawned_at: float) -> None:
    """Run in a fresh process: report seconds from spawn to the painted overview."""
    from app_tui import build_app

    app = build_app(path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: overview_painted(app))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"first_paint_s": time.time() - spawned_at, "cpu_s": usage.ru_utime + usage.ru_stime}),
              flush=True)


def bench_startup_process(path: Path, runs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds from spawn to the painted overview, one fresh process per run."""
    times = []
    for _ in range(runs):
        spawned = time.time()
        out = subprocess.run([sys.executable, __file__, "--child", str(spawned), "--study", str(path)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        times.append((row["first_paint_s"], row["cpu_s"]))
    return times


class Clock:
    """Wall and CPU time (this process, all threads) since ``start``."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def bench_in_process(path: Path, latents: list[int]) -> dict[str, object]:
    from app_tui import build_app
    from refusal_tui.screens.detail import FeatureDetailScreen
    from refusal_tui.screens.features import FeaturesScreen
    from refusal_tui.widgets import ExampleList

    clock = Clock()
    clock.start()
    app = build_app(path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: overview_painted(app))
        first_paint = clock.read()

        clock.start()
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, FeaturesScreen) and app.screen.grid.row_count > 0)
        table_s = clock.read()
        screen = app.screen
        assert len(screen.table) == CONFIG.d_sae and screen.grid.row_count <= screen.grid.page_size

        def detail_painted(latent: int) -> Callable[[], bool]:
            def check() -> bool:
                current = app.screen
                if not isinstance(current, FeatureDetailScreen) or current.latent != latent:
                    return False
                examples = current.query("#detail-examples")
                return bool(examples) and len(examples.first(ExampleList).examples) > 0
            return check

        # first: enter on the table's top row (what a user does first)
        top = screen.grid.current
        clock.start()
        await pilot.press("enter")
        await wait_until(pilot, detail_painted(top))
        enter_s = clock.read()
        await pilot.press("escape")
        await pilot.pause()

        detail_s: dict[int, tuple[float, float]] = {}
        for latent in latents:
            clock.start()
            app.open_latent(latent)
            await wait_until(pilot, detail_painted(latent))
            detail_s[latent] = clock.read()
            app.pop_screen()
            await pilot.pause()
    return {"first_paint_s": first_paint, "table_s": table_s, "enter_top_row_s": enter_s, "detail_s": detail_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=Path("/tmp/refusal_tui_bench/study_1m.h5"))
    parser.add_argument("--latents", type=int, default=12, help="random latents to open")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes for the start-up time")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        asyncio.run(startup_child(args.study, args.child))
        return 0

    path = ensure_study(args.study)
    from store import Study

    with Study(path) as study:
        print(f"study: {path} · {study.n_prompts:,} prompts · {int(study.token_offsets[-1]):,} tokens · "
              f"{study.codes(study.meta.layers[0]).d_sae:,} latents · {path.stat().st_size / 1e6:.0f} MB")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    def ms(pair: tuple[float, float]) -> str:
        return f"{pair[0] * 1000:5.0f} ms wall, {pair[1] * 1000:4.0f} ms CPU"

    def spread(pairs: list[tuple[float, float]]) -> str:
        walls, cpus = [p[0] * 1000 for p in pairs], [p[1] * 1000 for p in pairs]
        return (f"median {statistics.median(walls):.0f} ms wall (max {max(walls):.0f}), "
                f"median {statistics.median(cpus):.0f} ms CPU (max {max(cpus):.0f})")

    process = bench_startup_process(path, args.runs)
    print(f"first paint, fresh process (spawn → overview painted): {spread(process)}  [{args.runs} runs]")
    rng = np.random.default_rng(0)
    latents = [int(x) for x in rng.choice(CONFIG.d_sae, args.latents, replace=False)] + list(PLANTED)
    result = asyncio.run(bench_in_process(path, latents))
    print(f"first paint, in process (build_app → overview painted): {ms(result['first_paint_s'])}")
    print(f"feature table (key 2 → 65,536 rows sorted, window painted): {ms(result['table_s'])}")
    print(f"feature detail, enter on the table's top row: {ms(result['enter_top_row_s'])}")
    cold = [result["detail_s"][latent] for latent in latents if latent not in PLANTED]
    print(f"feature detail, {len(cold)} random latents: {spread(cold)}")
    print(f"feature detail, planted latents (~74k active tokens): {spread([result['detail_s'][p] for p in PLANTED])}")
    print("(CPU = this process's CPU time over the interval, all threads; on a loaded machine wall >> CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
