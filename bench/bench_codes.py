"""SAE-code storage benchmarks (issue 3).

    python bench/bench_codes.py query STUDY.h5 [--latents 50]
        "top activations of latent f" through the per-latent (CSC) index vs scanning the
        per-token (CSR) codes, on an existing study (e.g. the 1M-token synthetic one that
        bench/bench_tui.py builds). Target: ≤ 50 ms per query from the index.
    python bench/bench_codes.py size STUDY.h5
        bytes per 1M tokens, by dataset group.
    python bench/bench_codes.py overhead [--prompts 32]
        cache time with SAE codes vs residuals alone on the embedded model with its packaged
        SAEs, in one process (target: ≤ 25% extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import Study  # noqa: E402

SCAN_CHUNK = 1 << 22


def scan_csr(study: Study, layer: int, latent: int, k: int) -> list[tuple[int, float]]:
    """What answering the query costs without the index: read every token's codes."""
    group = study.file[f"layers/{layer}/codes"]
    indptr = group["indptr"][...]
    best: dict[int, float] = {}
    offsets = study.token_offsets
    for start in range(0, int(indptr[-1]), SCAN_CHUNK):
        stop = min(int(indptr[-1]), start + SCAN_CHUNK)
        hits = np.flatnonzero(group["indices"][start:stop] == latent)
        if not len(hits):
            continue
        values = group["values"][start:stop][hits].astype(np.float32)
        rows = np.searchsorted(indptr, start + hits, side="right") - 1
        for prompt, value in zip(np.searchsorted(offsets, rows, side="right") - 1, values):
            best[int(prompt)] = max(best.get(int(prompt), 0.0), float(value))
    return sorted(best.items(), key=lambda item: -item[1])[:k]


def query(args: argparse.Namespace) -> None:
    with Study(args.study) as study:
        layer = next(layer for layer in study.meta.layers if study.has_codes(layer))
        codes = study.codes(layer)
        rng = np.random.default_rng(0)
        latents = rng.choice(codes.d_sae, args.latents, replace=False)
        codes.top_activations(int(latents[0]))  # open datasets, read the index pointer once
        index_ms = []
        for latent in latents:
            start = time.perf_counter()
            codes.top_activations(int(latent), k=20)
            index_ms.append((time.perf_counter() - start) * 1000)
        scan_ms = []
        for latent in latents[: args.scans]:
            start = time.perf_counter()
            found = scan_csr(study, layer, int(latent), 20)
            scan_ms.append((time.perf_counter() - start) * 1000)
            assert [p for p, _ in found][:5] == [p for p, _, _ in codes.top_activations(int(latent), k=20)][:5] or len(found) < 5
        print(json.dumps({
            "tokens": int(study.token_offsets[-1]), "d_sae": codes.d_sae, "queries": len(latents),
            "index_ms_median": round(float(np.median(index_ms)), 2), "index_ms_p90": round(float(np.percentile(index_ms, 90)), 2),
            "csr_scan_ms_median": round(float(np.median(scan_ms)), 1), "speedup": round(float(np.median(scan_ms) / np.median(index_ms)), 1),
        }, indent=2))


def size(args: argparse.Namespace) -> None:
    sizes: dict[str, int] = {}
    with h5py.File(args.study, "r") as file:
        tokens = int(file["prompts/token_offsets"][-1])

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                group = "/".join(name.split("/")[:3]) if name.startswith("layers/") else name.split("/")[0]
                sizes[group] = sizes.get(group, 0) + obj.id.get_storage_size()
        file.visititems(visit)
    per_million = {group: round(value / tokens * 1e6 / 2**20, 1) for group, value in sorted(sizes.items())}
    print(json.dumps({"tokens": tokens, "file_mb": round(Path(args.study).stat().st_size / 2**20, 1),
                      "mb_per_1M_tokens": per_million, "total_mb_per_1M_tokens": round(sum(per_million.values()), 1)}, indent=2))


def overhead(args: argparse.Namespace) -> None:
    from cache.default_saes import default_sae_specs
    from cache.models import load_model
    from cache.pipeline import CacheConfig, run_cache

    loaded = load_model("default", device="cpu")
    specs = default_sae_specs()
    layers = tuple(sorted(int(spec.split("=")[0]) for spec in specs))
    times: dict[str, list[float]] = {"resid": [], "resid+codes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, saes in (("resid", ()), ("resid+codes", specs)):
                out = Path(tmp) / f"{name}.h5"
                config = CacheConfig(layers=layers, out=out, saes=saes, max_prompts=args.prompts // 2, positions="all", device="cpu", overwrite=True)
                start = time.perf_counter()
                run_cache(config, loaded=loaded, progress=False)
                times[name].append(time.perf_counter() - start)
    base, coded = min(times["resid"]), min(times["resid+codes"])
    print(json.dumps({"prompts": args.prompts, "layers": layers, "resid_s": round(base, 2), "codes_s": round(coded, 2),
                      "extra": f"{coded / base - 1:+.1%}", "runs": times}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("query")
    q.add_argument("study", type=Path)
    q.add_argument("--latents", type=int, default=50)
    q.add_argument("--scans", type=int, default=3, help="CSR scans (each reads every token's codes)")
    s = sub.add_parser("size")
    s.add_argument("study", type=Path)
    o = sub.add_parser("overhead")
    o.add_argument("--prompts", type=int, default=32)
    o.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    {"query": query, "size": size, "overhead": overhead}[args.mode](args)


if __name__ == "__main__":
    main()
