"""Stage ``summarize``: gather g_0's and every domain's metrics into the PTL curve (DVC plots) and one summary."""

from __future__ import annotations

import csv
import io
import json

from dasgen.config import Config
from dasgen.pipeline.common import read_json, write_json
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import atomic_write_text

CURVE_COLUMNS = ("domain", "t", "consistency", "target_miou")


def run_summary(config: Config, ws: Workspace) -> dict:
    """Writes ``metrics/ptl.csv`` (one row per domain, g_0 as domain 0) and ``metrics/summary.json``."""
    rows = []
    g0 = read_json(ws.metrics / "g0.json", remedy="rerun `dasgen train-g0` to rewrite it")
    rows.append({"domain": 0, "t": 0, "consistency": None, "target_miou": g0.get("target_miou")})
    for n in range(1, config.ptl.N + 1):
        m = read_json(ws.domain_metrics(n, config.ptl.N), remedy=f"run `dasgen translate --domain {n}` to (re)write "
                      "it (if `dvc repro` skipped that domain, dvc.yaml is older than params.yaml: run `dasgen "
                      "pipeline --write`)")
        rows.append({key: m.get(key) for key in CURVE_COLUMNS})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (round(v, 4) if isinstance(v, float) else v)) for k, v in row.items()})
    ws.metrics.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ws.metrics / "ptl.csv", buffer.getvalue())
    final = rows[-1]
    summary = {
        "domains": config.ptl.N,
        "source_only_target_miou": rows[0]["target_miou"],
        "final_target_miou": final["target_miou"],
        "final_consistency": final["consistency"],
        "params_sha256": config.sha256(),
    }
    write_json(ws.metrics / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    return json.dumps(summary, indent=2)
