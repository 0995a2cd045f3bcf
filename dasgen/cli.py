"""The ``dasgen`` command line: thin Typer commands, each parsing options and calling one plain stage function.

Every problem with the user's input is a DasgenError: the CLI prints its one line to stderr and exits 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dasgen.config import Config, load_config, parse_yaml
from dasgen.errors import DasgenError
from dasgen.research.ablate_spec import DEFAULT_SPEC

app = typer.Typer(
    name="dasgen",
    help="Label-true diffusion translation of synthetic segmentation datasets (Peng et al., ICCV 2023), "
    "as a reproducible DVC pipeline. Start with `dasgen plan`; `dvc repro` runs everything.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


class State:
    params: Path = Path("params.yaml")
    workspace: Path = Path(".")
    overrides: dict[str, Any] = {}

    @classmethod
    def config(cls) -> Config:
        from dasgen.pipeline.dvc_guard import check_dvc_stage

        config = load_config(cls.params, cls.overrides)
        check_dvc_stage(config)  # under `dvc repro`: refuse to run a stage of a dvc.yaml older than params.yaml
        return config

    @classmethod
    def ws(cls):
        from dasgen.pipeline.workspace import Workspace

        return Workspace(cls.workspace)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise DasgenError(f"--set {text!r}: expected KEY=VALUE, e.g. --set sgg.lambda=40")
    return key.strip(), parse_yaml(value, f"--set {key.strip()}")


def handles_errors(command: Callable) -> Callable:
    """Turn DasgenError into one line on stderr and exit code 1; Ctrl-C into exit code 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DasgenError as error:
            err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        import dasgen

        print(f"dasgen {dasgen.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    params: Annotated[Path, typer.Option("--params", "-p", help="Params file.")] = Path("params.yaml"),
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Root of the pipeline's data/ and metrics/.")]
    = Path("."),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a param: KEY=VALUE (repeatable).")]
    = None,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print dasgen's version and exit.")] = False,
) -> None:
    """Global options shared by every command."""
    State.params, State.workspace = params, workspace
    try:
        State.overrides = dict(_parse_override(s) for s in (set_ or []))
    except DasgenError as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
@handles_errors
def toy(out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write (default: toy.out).")] = None
        ) -> None:
    """Generate the procedural toy domains: DIR/source (GTA5 layout) and DIR/target (Cityscapes layout)."""
    from dasgen.stages.toy import run_toy

    summary = run_toy(State.config(), root=State.workspace, out=out_dir)
    err.print(f"toy domains written: {json.dumps(summary)}")


@app.command()
@handles_errors
def inspect(
    root: Annotated[Path, typer.Argument(help="Dataset root directory.")],
    kind: Annotated[str, typer.Option("--kind", help="gta5 | synthia | cityscapes | folder")],
    split: Annotated[Optional[str], typer.Option("--split", help="Split to check (dataset-specific).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a dataset before a long run: usable pairs, broken pairs with reasons, resolutions, class pixels."""
    from dasgen.datasets.inspect import format_report, inspect_dataset
    from dasgen.datasets.registry import open_dataset

    labelled = not (kind == "cityscapes" and split in ("train_extra",))
    report = inspect_dataset(open_dataset(kind, root, split=split, labelled=labelled), progress=not as_json)
    if as_json:
        print(json.dumps(report))
    else:
        out.print(format_report(report))


@app.command()
@handles_errors
def scan() -> None:
    """Decode every source pair once; record usable pairs and skipped ones (with reasons) in data/source_pairs.json."""
    from dasgen.stages.scan import run_scan

    run_scan(State.config(), State.ws(), console=err)


@app.command("train-diffusion")
@handles_errors
def train_diffusion() -> None:
    """Train the target DDPM on unlabelled target images (Eq. 5); resumes after an interruption."""
    from dasgen.stages.train_diffusion import run_train_diffusion

    run_train_diffusion(State.config(), State.ws(), console=err)


@app.command("train-g0")
@handles_errors
def train_g0() -> None:
    """Train the source segmenter g_0 with the noisy+masked augmentation (Supp. C)."""
    from dasgen.stages.train_g0 import run_train_g0

    run_train_g0(State.config(), State.ws(), console=err)


@app.command()
@handles_errors
def translate(
    domain: Annotated[Optional[int], typer.Option("--domain", "-n", help="One PTL domain n (1..N).")] = None,
    domains: Annotated[Optional[str], typer.Option("--domains", help="A range FIRST-LAST, run in order.")] = None,
) -> None:
    """Run PTL domain(s): translate X^n with SGG guided by g_{n-1} (Eq. 11), fine-tune g_n (Eq. 12).

    Resumable: run it again after an interruption. Under `torchrun --nproc_per_node K -m dasgen translate ...`
    the images are sharded across ranks and the artifact is the same as with one process.
    """
    from dasgen.pipeline.common import parse_domain_range
    from dasgen.pipeline.distributed import init_distributed, shutdown_distributed
    from dasgen.stages.translate import run_domain

    config = State.config()
    if (domain is None) == (domains is None):
        raise DasgenError("translate: give exactly one of --domain N or --domains FIRST-LAST")
    selected = parse_domain_range(str(domain) if domain is not None else domains, config.ptl.N)
    ctx = init_distributed()
    try:
        for n in selected:
            run_domain(config, State.ws(), n, ctx=ctx, console=err)
    finally:
        shutdown_distributed(ctx)


@app.command()
@handles_errors
def summarize() -> None:
    """Gather per-domain metrics into metrics/ptl.csv (DVC plots) and metrics/summary.json."""
    from dasgen.stages.summarize import format_summary, run_summary

    out.print(format_summary(run_summary(State.config(), State.ws())))


@app.command()
@handles_errors
def export(
    fmt: Annotated[Optional[str], typer.Option("--format", help="cityscapes | parquet | hdf5 (default: export.format)")]
    = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: export.out).")] = None,
    domain: Annotated[Optional[int], typer.Option("--domain", "-n", help="Domain to export (default: N).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="translation | source resolution.")] = None,
    min_consistency: Annotated[Optional[float], typer.Option("--min-consistency",
                                                             help="Leave out images scoring below this.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory (an export that was "
                                                        "killed or failed is redone without it).")] = False,
    splits: Annotated[Optional[str], typer.Option("--splits", help="all-train: every image in train (default: "
                                                  "export.splits) | source: the source's own splits.")] = None,
) -> None:
    """Write a translated domain as a dataset (Cityscapes layout, HF Parquet or HDF5) with card and manifest."""
    from dasgen.stages.export import run_export

    if fmt is not None and fmt not in ("cityscapes", "parquet", "hdf5"):
        raise DasgenError(f"--format {fmt!r}: expected cityscapes, parquet or hdf5")
    if size is not None and size not in ("translation", "source"):
        raise DasgenError(f"--size {size!r}: expected translation or source")
    if splits is not None and splits not in ("all-train", "source"):
        raise DasgenError(f"--splits {splits!r}: expected all-train or source")
    summary = run_export(State.config(), State.ws(), fmt=fmt, out=out_dir, domain=domain, size=size,
                         min_consistency=min_consistency, force=force, splits=splits)
    err.print(f"export written: {escape(json.dumps(summary, default=str))}", highlight=False)


@app.command()
@handles_errors
def verify(path: Annotated[Path, typer.Argument(help="An export (manifest.json) or a domain artifact.")]) -> None:
    """Re-hash an export or domain artifact; report missing, extra and altered files. Exit 0 only if all match."""
    from dasgen.artifact.verify import verify as verify_path

    report = verify_path(path)
    if not report.ok:
        out.print(escape(report.summary()), highlight=False, soft_wrap=True)
        err.print(f"[bold red]verify failed:[/] {escape(str(path))}: {len(report.missing)} missing, "
                  f"{len(report.extra)} extra, {len(report.altered)} altered, {len(report.invalid)} invalid",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"verified: {escape(str(path))} ({report.checked} files match)", highlight=False)


@app.command()
@handles_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A segmenter checkpoint (.safetensors with .json sidecar).")],
    kind: Annotated[Optional[str], typer.Option("--kind", help="Labelled set kind (default: params' target).")] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="Labelled set root (default: params' target).")]
    = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split (default: data.target.val_split).")] = None,
    protocol: Annotated[Optional[int], typer.Option("--protocol", help="19, 16 or 13 classes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a segmenter (g_0 .. g_N) on a labelled target set: per-class IoU and mIoU (the paper's measure)."""
    from dasgen.commands.evaluate import run_evaluate

    config = State.config()
    if protocol is not None and protocol not in (19, 16, 13):
        raise DasgenError(f"--protocol {protocol}: expected 19, 16 or 13")
    result = run_evaluate(config, checkpoint, workspace=State.workspace, kind=kind, root=root, split=split, protocol=protocol)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{checkpoint} on {result['dataset']} ({result['protocol']}-class protocol)")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in result["per_class"].items():
        table.add_row(name, "-" if iou is None else f"{100 * iou:.1f}")
    table.add_row("[bold]mIoU[/]", f"[bold]{100 * result['miou']:.1f}[/]")
    out.print(table)


@app.command()
@handles_errors
def calibrate(
    images: Annotated[int, typer.Option("--images", min=1, help="Source images to translate (K).")] = 8,
    domain: Annotated[Optional[int], typer.Option("--domain", min=1, help="Domain whose chain to run (default: N).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Before a long run: how large is the guidance step? Runs a domain's guided chain on K source images with the
    DDPM and the newest judge, and reports per module (LCG, GSG) the step over the noise std, the share the cap clips,
    a verdict (inert / ok / explosive), the lambda that would reach the target step, and label consistency guided vs
    unguided."""
    from dasgen.commands.calibrate import render_calibration, run_calibrate

    result = run_calibrate(State.config(), State.ws(), images=images, domain=domain)
    if as_json:
        print(json.dumps(result))
    else:
        for line in render_calibration(result):
            out.print(line, highlight=False, soft_wrap=True)


@app.command()
@handles_errors
def status(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Where the run stands: each stage done or how far along, the current domain's progress, an ETA for the rest.

    Reads files only; safe to run while a stage runs."""
    from dasgen.commands.status import run_status

    result = run_status(State.config(), State.ws())
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    width = max(len(stage) for stage, _ in result.lines)
    for stage, state in result.lines:
        out.print(f"{stage:<{width}}  {state}", highlight=False, markup=False, soft_wrap=True)


@app.command()
@handles_errors
def plan(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    source_images: Annotated[Optional[int], typer.Option("--source-images", min=1,
                                                         help="Price this many source images (e.g. 24966 for GTA5) "
                                                         "instead of the scanned count.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="Wall time on this many GPUs (torchrun ranks).")] = 8,
    gpu_tflops: Annotated[Optional[float], typer.Option(
        "--gpu-tflops", min=0.001, help="Sustained TFLOP/s of one GPU (default: an assumed 100; measure yours).")]
    = None,
) -> None:
    """Print the run's GPU time, peak GPU memory and disk, then the PTL schedule and its work units, before anything
    runs."""
    from dasgen.planning.report import plan_report, render_plan

    report = plan_report(State.config(), State.ws(), source_images=source_images, gpus=gpus,
                         gpu_tflops=gpu_tflops)
    if as_json:
        print(json.dumps(report))
    else:
        out.print(render_plan(report), soft_wrap=True)


@app.command()
@handles_errors
def pipeline(
    write: Annotated[bool, typer.Option("--write", help="Regenerate dvc.yaml from params.yaml.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Fail if dvc.yaml is out of date.")] = False,
    path: Annotated[Path, typer.Option("--path", help="The dvc.yaml to write or check.")] = Path("dvc.yaml"),
) -> None:
    """Generate (or check) dvc.yaml: one stage per group of PTL domains, chained g_{n-1} -> g_n."""
    from dasgen.pipeline.dvc_yaml import check_pipeline, render_pipeline, write_pipeline

    config = State.config()
    if write:
        changed = write_pipeline(config, path)
        err.print(f"{path}: {'written' if changed else 'already up to date'}")
    elif check:
        check_pipeline(config, path)
        err.print(f"{path}: up to date")
    else:
        sys.stdout.write(render_pipeline(config))


def _csv_list(text: Optional[str], what: str, cast: Callable = str) -> Optional[list]:
    if text is None:
        return None
    try:
        return [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DasgenError(f"{what} {text!r}: expected a comma-separated list, e.g. {what} 0,1") from None


@app.command()
@handles_errors
def ablate(
    spec: Annotated[Path, typer.Option("--spec", help="Ablation spec: base params, seeds, variants.")]
    = DEFAULT_SPEC,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Subset of the spec's seeds, e.g. 0,1.")] = None,
    variants: Annotated[Optional[str], typer.Option("--variants", help="Subset of the spec's variants.")] = None,
    ddpm: Annotated[Optional[Path], typer.Option("--ddpm", help="Reuse this trained DDPM (diffusers directory, "
                                                 "e.g. data/diffusion/model) instead of training one.")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Only rewrite the reports from finished runs.")]
    = False,
) -> None:
    """Reproduce the paper's ablations (Tabs. 2, 3, 5) on the toy with paired seeds; writes CSV, JSON and Markdown.

    Params come from the spec's `base` file and overrides (not --params/--set). Resumable: finished runs are skipped.
    """
    from dasgen.research.ablate import load_spec, render_markdown, run_ablation

    report = run_ablation(load_spec(spec), seeds=_csv_list(seeds, "--seeds", int),
                          variants=_csv_list(variants, "--variants"), ddpm=ddpm, report_only=report_only, console=err)
    out.print(render_markdown(report), highlight=False)


def _figure_out(path: Path) -> Path:
    """``--out`` of a figure, checked before any work: a ``.png`` not inside a dataset or a stage's artifacts."""
    from dasgen.io.paths import refuse_location
    from dasgen.pipeline.protected import figure_protected_paths

    config = State.config() if State.params.is_file() else None  # plot needs no params; then only the artifacts
    refuse_location(path, figure_protected_paths(config, State.ws()), doing="write a figure over")
    if path.suffix.lower() != ".png" or path.is_dir():
        raise DasgenError(f"--out {path}: a figure is written as a .png file; name one (an existing file of another "
                          "kind, or a directory, is never overwritten)")
    return path


@app.command()
@handles_errors
def sheet(
    out_path: Annotated[Optional[Path], typer.Option("--out", help="PNG to write (default: metrics/sheet.png, or "
                                                     "metrics/sheet-guidance.png with --guided-vs-unguided).")]
    = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Source images (rows).")] = 4,
    ids: Annotated[Optional[str], typer.Option("--ids", help="Source ids to show, comma-separated.")] = None,
    guided: Annotated[bool, typer.Option("--guided-vs-unguided", help="Re-translate the last domain unguided, "
                                         "LCG only, GSG only and with SGG at the same seeds (Fig. 7).")] = False,
) -> None:
    """Contact sheet of the translation: source | label | X^n for several n | label over X^N (Fig. 4 analogue)."""
    from dasgen.research.sheet import domain_sheet, guidance_sheet

    ws = State.ws()
    path = _figure_out(out_path or ws.metrics / ("sheet-guidance.png" if guided else "sheet.png"))
    if guided:
        result = guidance_sheet(State.config(), ws, path, count=count, ids=_csv_list(ids, "--ids"))
        result.pop("images")
    else:
        result = domain_sheet(State.config(), ws, path, count=count, ids=_csv_list(ids, "--ids"))
    err.print(f"sheet written: {escape(json.dumps(result))}", highlight=False)


@app.command()
@handles_errors
def plot(
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="PTL curve (default: metrics/ptl.csv).")] = None,
    ablation: Annotated[Optional[Path], typer.Option("--ablation", help="Plot this ablation.json instead.")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="PNG to write (default: metrics/ptl.png, or "
                                                     "ablation.png beside --ablation).")] = None,
) -> None:
    """PNG of per-domain label consistency and target mIoU against n (from `dasgen summarize`), or of an ablation."""
    from dasgen.research.plots import plot_ablation, plot_ptl

    ws = State.ws()
    if ablation is not None:
        result = plot_ablation(ablation, _figure_out(out_path or ablation.with_suffix(".png")))
    else:
        result = plot_ptl(csv_path or ws.metrics / "ptl.csv", _figure_out(out_path or ws.metrics / "ptl.png"))
    err.print(f"plot written: {escape(json.dumps(result))}", highlight=False)
