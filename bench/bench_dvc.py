"""DVC bookkeeping time of a generated 600-domain pipeline: ``dvc status`` and ``dvc repro --dry``.

Not a test. For each ``ptl.domains_per_stage`` (20, as in params-paper.yaml: 30 domain stages; and 1: 600 stages)
the script generates ``dvc.yaml`` from the paper params with :func:`dasgen.pipeline.dvc_yaml.build_pipeline`, in a
fresh temporary git + DVC repository whose every dependency and output exists as a small dummy file (each domain
directory holds five files; the real ones hold Parquet shards, so this measures DVC's per-stage bookkeeping, not
hashing image bytes). ``dvc commit --force`` writes ``dvc.lock`` (timed too), then, ``--repeats`` times each:

- ``status_clean`` / ``dry_clean``: ``dvc status`` and ``dvc repro --dry`` with everything up to date;
- ``status_stale`` / ``dry_stale``: the same after changing ``sgg.lambda`` in params.yaml, which makes every
  domain stage (and what follows) stale, so ``repro --dry`` lists the whole chain.

    python bench/bench_dvc.py                       # table + JSON lines, a few minutes
    python bench/bench_dvc.py --json --repeats 3    # JSON lines only
    python bench/bench_dvc.py --domains-per-stage 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dasgen.config import load_config
from dasgen.pipeline.dvc_yaml import build_pipeline, render_pipeline

REPO = Path(__file__).resolve().parent.parent


def _dvc() -> list[str]:
    """The ``dvc`` next to this interpreter (the project's venv), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return [str(local)] if local.is_file() else ["dvc"]


def run(cmd: list[str], cwd: Path) -> float:
    """Seconds to run ``cmd`` in ``cwd``; raises with its output when it fails."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return seconds


def _paths(entries) -> list[str]:
    """Paths of a stage's deps/outs/metrics list (entries are strings or {path: options})."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def make_repo(root: Path, params: dict, domains_per_stage: int) -> dict:
    """A git + DVC repo at ``root`` with the generated dvc.yaml and a dummy file for every dep and out."""
    params = json.loads(json.dumps(params))
    params["ptl"]["domains_per_stage"] = domains_per_stage
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(root / "params.yaml")
    (root / "dvc.yaml").write_text(render_pipeline(config))
    pipeline = build_pipeline(config)
    outs = set()
    for stage in pipeline["stages"].values():
        outs.update(_paths(stage.get("outs")))
        outs.update(_paths(stage.get("metrics")))
        outs.update(_paths(stage.get("plots")))
    for stage in pipeline["stages"].values():
        for path in _paths(stage.get("deps")):
            if any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs):
                continue  # produced by an upstream stage
            target = root / path
            if "." in Path(path).name:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"dummy dep {path}\n")
            else:  # a code folder such as dasgen/guidance
                target.mkdir(parents=True, exist_ok=True)
                (target / "__init__.py").write_text(f"# dummy {path}\n")
    for path in sorted(outs):
        target = root / path
        if "." in Path(path).name:  # a file output (metrics, source_pairs.json, ptl.csv)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"dummy out {path}\n")
        else:  # a directory output: a domain artifact, the DDPM, g_0, the export
            target.mkdir(parents=True, exist_ok=True)
            for name in ("index.parquet", "segmenter.safetensors", "segmenter.json", "metrics.json",
                         "provenance.json"):
                (target / name).write_text(f"dummy {path}/{name}\n")
            if path.endswith("diffusion"):
                (target / "model").mkdir(exist_ok=True)
                for name in ("config.json", "diffusion_pytorch_model.safetensors"):
                    (target / "model" / name).write_text(f"dummy {name}\n")
            if path.endswith("g0"):
                (target / "segmenter.safetensors").write_text("dummy g0\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.invalid"],
                ["git", "config", "user.name", "bench"], _dvc() + ["init", "-q"],
                _dvc() + ["config", "core.autostage", "false"], _dvc() + ["config", "core.analytics", "false"]):
        run(cmd, root)
    domain_stages = sum(1 for name in pipeline["stages"] if name.startswith("domain"))
    return {"stages": len(pipeline["stages"]), "domain_stages": domain_stages, "domains": config.ptl.N}


def bench_one(domains_per_stage: int, params: dict, repeats: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"dasgen-bench-dvc-{domains_per_stage}-"))
    try:
        info = make_repo(root, params, domains_per_stage)
        dvc = _dvc()
        commit_s = run(dvc + ["commit", "--force", "--quiet"], root)
        row = {"domains_per_stage": domains_per_stage, **info, "commit_s": commit_s}
        for label in ("clean", "stale"):
            if label == "stale":
                changed = yaml.safe_load((root / "params.yaml").read_text())
                changed["sgg"]["lambda"] = float(changed["sgg"]["lambda"]) + 1.0
                (root / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
            status = [run(dvc + ["status"], root) for _ in range(repeats)]
            dry = [run(dvc + ["repro", "--dry"], root) for _ in range(repeats)]
            row[f"status_{label}_s"] = statistics.median(status)
            row[f"dry_{label}_s"] = statistics.median(dry)
        row["dry_stale_s_per_stage"] = row["dry_stale_s"] / info["stages"]
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params-paper.yaml")
    parser.add_argument("--domains-per-stage", nargs="+", type=int, default=[20, 1])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command; the median is reported")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args()
    params = load_config(args.params).to_dict()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    rows = []
    for size in args.domains_per_stage:
        rows.append(bench_one(size, params, args.repeats))
        if not args.json:
            print(f"... domains_per_stage={size} done", flush=True)
    if not args.json:
        print(f"{'domains/stage':>13} {'stages':>6} {'commit s':>8} {'status s':>8} {'dry s':>7} "
              f"{'status stale s':>14} {'dry stale s':>11}")
        for r in rows:
            print(f"{r['domains_per_stage']:>13} {r['stages']:>6} {r['commit_s']:>8.1f} {r['status_clean_s']:>8.2f} "
                  f"{r['dry_clean_s']:>7.2f} {r['status_stale_s']:>14.2f} {r['dry_stale_s']:>11.2f}")
        print(f"(N = {rows[0]['domains']} domains from {args.params.name}; medians of {args.repeats} runs; "
              "'stale' = after changing sgg.lambda, so every domain stage is out of date)")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
