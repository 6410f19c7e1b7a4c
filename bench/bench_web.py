"""Web demo latency and memory on a ~1M-token / 65k-latent synthetic study.

    python bench/bench_web.py [--study /tmp/refusal_web_bench/study_1m.h5] [--requests 20] [--no-browser]

Builds the study once (about 6 minutes on 2 cores; reused afterwards), then measures:
  1. callback: ``views.feature_view`` called in-process (what the server computes per click),
     after the warm-up ``build_app`` does (the first, cold call is reported separately);
  2. server-side: Gradio's ``process_api`` for the detail event in-process: input preprocessing,
     the callback, and output postprocessing (Markdown, HTML, Plotly JSON, tables);
  3. round trip: a request through a running server's queue over loopback (gradio_client), from
     sending the latent id to receiving the outputs (includes the client's own overhead);
  4. browser (if chromium + playwright are installed): click "Show latent" to the new detail in the DOM;
  5. memory: resident set of the server process with the study open (after start, and peak).
Latents are drawn at random (seeded), plus the planted refusal latents, which fire on ~74k tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import SyntheticConfig, make_synthetic_study  # noqa: E402

CONFIG = SyntheticConfig(n_prompts=48_800, words_per_prompt=(6, 20), d_sae=65536, active_per_token=50)
"""~1.0M tokens (20.5 per prompt on average), 65,536 latents, ~50 active per token."""


def ensure_study(path: Path) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        make_synthetic_study(path, CONFIG)
        print(f"built {path} in {time.perf_counter() - started:.0f} s")
    return path


def summarise(name: str, seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    row = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max())}
    print(f"{name:<34} median {row['median_ms']:7.1f} ms   p90 {row['p90_ms']:7.1f} ms   max {row['max_ms']:7.1f} ms"
          f"   (n={len(ms)})")
    return row


def bench_callbacks(path: Path, latents: list[int]) -> dict[str, object]:
    from refusal_web import plots, views
    from refusal_web.context import make_context
    from store import Study

    with Study(path) as study:
        ctx = make_context(study)
        plots.warm_up()
        started = time.perf_counter()
        ctx.table(ctx.layer)
        table_s = time.perf_counter() - started
        started = time.perf_counter()
        views.feature_view(ctx, None, latents[-1])
        cold_s = time.perf_counter() - started
        detail = []
        for latent in latents:
            started = time.perf_counter()
            head, *_ = views.feature_view(ctx, None, latent)
            detail.append(time.perf_counter() - started)
            assert head.startswith("### Latent"), head
        pages = []
        for query, sort in [("", "cosine"), ("freq_diff>0.05", "freq_diff"), ("12", "max_active"), ("", "latent")]:
            started = time.perf_counter()
            views.feature_page(ctx, None, query, sort, True, 3)
            pages.append(time.perf_counter() - started)
        print(f"feature table built once in {table_s * 1000:.0f} ms for {len(ctx.table(ctx.layer)):,} latents; "
              f"first (cold) feature_view {cold_s * 1000:.0f} ms")
        return {"feature_view": summarise("callback feature_view", detail),
                "feature_page": summarise("callback feature_page (filter+sort)", pages),
                "table_build_ms": table_s * 1000, "cold_feature_view_ms": cold_s * 1000}


def bench_process_api(path: Path, latents: list[int]) -> dict[str, object]:
    """Gradio's own handling of the event, in-process (uses Blocks.process_api, a Gradio internal)."""
    import asyncio

    from gradio.state_holder import SessionState

    import app_web
    from store import Study

    with Study(path) as study:
        demo = app_web.build_app(study)
        event = next(fn for fn in demo.fns.values() if fn.api_name == "feature_detail")
        state = SessionState(demo)
        seconds = []
        for latent in latents:
            started = time.perf_counter()
            output = asyncio.run(demo.process_api(event, [None, latent], state=state))
            seconds.append(time.perf_counter() - started)
            assert f"Latent {latent}" in output["data"][0], output["data"][0]
        return {"process_api": summarise("server-side process_api", seconds)}


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    field = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
    return int(field["VmRSS"]) / 1024, int(field["VmHWM"]) / 1024


def start_server(path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "app_web.py"), str(path), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            urllib.request.urlopen(url + "config", timeout=2).read()
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("server did not start in 180 s")


def bench_server(url: str, latents: list[int]) -> dict[str, object]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(None, latents[0], api_name="/feature_detail")  # first request opens the SSE stream
    seconds = []
    for latent in latents:
        started = time.perf_counter()
        head = client.predict(None, latent, api_name="/feature_detail")[0]
        seconds.append(time.perf_counter() - started)
        assert f"Latent {latent}" in head, head
    return {"feature_detail_request": summarise("round trip (gradio_client)", seconds)}


def bench_browser(url: str, latents: list[int]) -> dict[str, object] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser: skipped (no playwright; run scripts/install_browser.sh)")
        return None
    if not Path("/usr/bin/chromium").exists():
        print("browser: skipped (no /usr/bin/chromium; run scripts/install_browser.sh)")
        return None
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_role("tab", name="Features").click()
        page.wait_for_selector("#feature-head")
        for latent in latents:
            page.locator("#feature-latent input").fill(str(latent))
            started = time.perf_counter()
            page.locator("#feature-show").click()
            page.wait_for_function(
                "id => { const h = document.querySelector('#feature-head'); const e = document.querySelector('#feature-examples');"
                " return h && h.innerText.includes('Latent ' + id + ' ') && e && e.innerHTML.includes('data-latent=\"' + id + '\"'); }",
                arg=latent)
            seconds.append(time.perf_counter() - started)
        browser.close()
    return {"click_to_rendered": summarise("browser click → detail rendered", seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("/tmp/refusal_web_bench/study_1m.h5"))
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    path = ensure_study(args.study)
    rng = np.random.default_rng(0)
    latents = [*CONFIG.refusal_latents, *rng.choice(CONFIG.d_sae, max(0, args.requests - 5), replace=False).tolist()]
    results: dict[str, object] = {"study": str(path), "study_mb": path.stat().st_size / 2**20}
    results["callbacks"] = bench_callbacks(path, latents)
    results["server_side"] = bench_process_api(path, latents)
    server, url = start_server(path)
    try:
        results["server_rss_mb_after_start"], _ = rss_mb(server.pid)
        results["server"] = bench_server(url, latents)
        if not args.no_browser:
            results["browser"] = bench_browser(url, latents[::2])
        rss, peak = rss_mb(server.pid)
        results["server_rss_mb_after_requests"], results["server_peak_rss_mb"] = rss, peak
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"server memory: {results['server_rss_mb_after_start']:.0f} MB resident after start, "
          f"{rss:.0f} MB after the requests, peak {peak:.0f} MB (study file {results['study_mb']:.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
