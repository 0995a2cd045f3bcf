"""Training metrics while they train, with DVCLive (DVC's own logger): ``dvc plots show`` and ``dvc exp show`` read them
during a run, not only at its end.

Each training loop (the DDPM, g_0, each g_n's fine-tune) logs to its own directory under ``metrics/live/``:
``metrics.json`` (the latest values) and ``plots/metrics/<name>.tsv`` (one row per logged step); ``dvc.yaml``
declares both. The loops call a plain ``log(step, {name: value})`` and know nothing of DVCLive. A resumed loop logs
its saved history again first, so the files always hold the whole curve from step 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from dasgen.pipeline.workspace import Workspace

MetricsLog = Callable[[int, dict[str, float]], None]


def live_dir(ws: Workspace, name: str) -> Path:
    """``metrics/live/<name>``: ``diffusion``, ``g0`` or ``domain-<n>``."""
    return ws.metrics / "live" / name


def live_plots(directory: Path) -> Path:
    """The directory of DVCLive's per-metric TSV files (what dvc.yaml declares as plots)."""
    return directory / "plots" / "metrics"


def warner(console: Console, prefix: str) -> Callable[[str], None]:
    """A ``warn`` for :func:`live_metrics`: one yellow line on ``console``, the message printed as it is."""
    return lambda line: console.print(f"{prefix}: {line}", style="yellow", markup=False, highlight=False,
                                      soft_wrap=True)


@contextmanager
def live_metrics(directory: Path, *, enabled: bool = True,
                 warn: Callable[[str], None] | None = None) -> Iterator[MetricsLog | None]:
    """A ``log(step, values)`` writing to DVCLive in ``directory`` (emptied first), or None when not ``enabled``.

    DVCLive is told not to write ``dvc.yaml`` (ours is generated) nor to save an experiment: the pipeline records
    the files like any other metrics. Training never fails for its metrics: if DVCLive cannot start (it fails in a
    git repository without a commit), ``warn`` hears why and nothing is logged. Either way the files dvc.yaml
    declares exist afterwards (empty when nothing was logged, e.g. zero iterations).
    """
    if not enabled:
        yield None
        return
    from dvclive import Live  # imported here: it loads DVC, which no other part of a stage needs

    try:
        live = Live(dir=str(directory), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
    except Exception as error:  # noqa: BLE001 - DVCLive's and scmrepo's errors have no common base
        if warn is not None:
            warn(f"training metrics not logged: DVCLive could not start ({error})")
        live = None
    if live is None:
        yield None
    else:
        with live:
            def log(step: int, values: dict[str, float]) -> None:
                live.step = step
                for name, value in values.items():
                    live.log_metric(name, value, plot=True)
                live.next_step()

            yield log
    plots = live_plots(directory)
    plots.mkdir(parents=True, exist_ok=True)
    if not (plots / "loss.tsv").exists():
        (plots / "loss.tsv").write_text("step\tloss\n")
    if not (directory / "metrics.json").exists():
        (directory / "metrics.json").write_text("{}\n")
