"""Export throughput and peak memory: each format on 100 and 1,000 synthetic toy-like 256x512 images.

For each size N the script builds a synthetic source tree and finished PNG- and parquet-mode domains (timing the
``DomainWriter`` too, on 20 pre-drawn images cycled), then exports the PNG-mode domain in every format, each in a
fresh subprocess so that its peak RSS (``VmHWM``) belongs to that export alone. The baseline is a bare loop, in its
own subprocess, that only encodes the same image and label PNGs with Pillow in memory (no reads, no writes, no
checksums): ``ratio`` = export images/s / baseline images/s. A streaming export's peak RSS stays flat from N = 100
to N = 1,000.

    python bench/bench_export.py            # table
    python bench/bench_export.py --json     # machine-readable
    python bench/bench_export.py --sizes 50 # quick run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.synthetic: the tests' data

HEIGHT, WIDTH = 256, 512
FORMATS = ("cityscapes", "parquet", "hdf5")


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB.

    ``VmHWM`` from /proc (the high-water mark of this exec's memory); ``ru_maxrss`` would also count the parent's
    memory inherited before exec on Linux.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_export(domain: Path, source: Path, out: Path, fmt: str) -> dict:
    from dasgen.export.run import export_domain
    from helpers.synthetic import label_loader_for

    start = time.perf_counter()
    summary = export_domain(domain, out, fmt=fmt, label_loader=label_loader_for(source), progress=False)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": seconds, "images": summary["exported"], "peak_rss_mib": peak_rss_mib(), "bytes": size}


def worker_baseline(ids: list[str]) -> dict:
    """Encode each image's RGB PNG and its label PNG with Pillow, in memory: the floor any exporter pays."""
    import io

    from PIL import Image

    from helpers.synthetic import synthetic_scene, translated_image

    scenes = {i: (translated_image(i, HEIGHT, WIDTH), synthetic_scene(int(i), HEIGHT, WIDTH)[1]) for i in ids[:20]}
    start = time.perf_counter()
    for n, image_id in enumerate(ids):
        image, label = scenes[ids[n % len(scenes)]]  # cycle 20 pre-drawn scenes: time only the encoding
        for array, mode in ((image, "RGB"), (label, "L")):
            Image.fromarray(array, mode).save(io.BytesIO(), format="PNG", compress_level=6)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(ids), "peak_rss_mib": peak_rss_mib()}


def run_worker(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_domain(directory: Path, ids: list[str], image_format: str) -> float:
    """Write and finalize a domain of 20 pre-drawn images cycled over ``ids``; returns images/s of the writer."""
    from dasgen.artifact.writer import DomainWriter
    from helpers.synthetic import synthetic_record, translated_image

    images = [translated_image(i, HEIGHT, WIDTH) for i in ids[:20]]
    start = time.perf_counter()
    with DomainWriter(directory, image_format=image_format) as writer:
        for n, image_id in enumerate(ids):
            writer.add(synthetic_record(image_id, height=HEIGHT, width=WIDTH), images[n % len(images)])
    writer.finalize(metrics={}, provenance={"source": {"kind": "toy"}})
    return len(ids) / (time.perf_counter() - start)


def bench_size(n: int, scratch: Path) -> dict:
    from helpers.synthetic import write_synthetic_source

    ids = [f"{i:05d}" for i in range(1, n + 1)]
    root = scratch / f"n{n}"
    write_synthetic_source(root / "source", ids, height=HEIGHT, width=WIDTH)
    write_ips = {fmt: write_domain(root / f"domain-{fmt}", ids, fmt) for fmt in ("png", "parquet")}

    base = run_worker(["baseline", str(n)])
    base_ips = base["images"] / base["seconds"]
    result = {
        "images": n,
        "size": f"{HEIGHT}x{WIDTH}",
        "domain_write_images_per_s": {fmt: round(ips, 1) for fmt, ips in write_ips.items()},
        "baseline": {"images_per_s": round(base_ips, 1), "peak_rss_mib": round(base["peak_rss_mib"], 1)},
        "exports": {},
    }
    for fmt in FORMATS:
        out = root / f"out-{fmt}"
        stats = run_worker(["export", str(root / "domain-png"), str(root / "source"), str(out), fmt])
        ips = stats["images"] / stats["seconds"]
        result["exports"][fmt] = {
            "images_per_s": round(ips, 1),
            "ratio_to_baseline": round(ips / base_ips, 2),
            "peak_rss_mib": round(stats["peak_rss_mib"], 1),
            "output_mib": round(stats["bytes"] / 2**20, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of images")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "baseline":
            stats = worker_baseline([f"{i:05d}" for i in range(1, int(rest[0]) + 1)])
        else:
            stats = worker_export(Path(rest[0]), Path(rest[1]), Path(rest[2]), rest[3])
        print(json.dumps(stats))
        return

    with tempfile.TemporaryDirectory(prefix="dasgen-bench-") as scratch:
        results = [bench_size(n, Path(scratch)) for n in args.sizes]
    if args.json:
        print(json.dumps({"cpu_count": __import__("os").cpu_count(), "results": results}, indent=2))
        return
    print(f"{'N':>6} {'what':<12} {'img/s':>8} {'ratio':>6} {'peak RSS MiB':>13} {'out MiB':>8}")
    for r in results:
        print(f"{r['images']:>6} {'baseline':<12} {r['baseline']['images_per_s']:>8} {'1.00':>6} "
              f"{r['baseline']['peak_rss_mib']:>13} {'':>8}")
        for fmt, e in r["exports"].items():
            print(f"{r['images']:>6} {fmt:<12} {e['images_per_s']:>8} {e['ratio_to_baseline']:>6} "
                  f"{e['peak_rss_mib']:>13} {e['output_mib']:>8}")
        for fmt, ips in r["domain_write_images_per_s"].items():
            print(f"{r['images']:>6} {'write ' + fmt:<12} {ips:>8}  (DomainWriter.add + finalize)")


if __name__ == "__main__":
    main()
