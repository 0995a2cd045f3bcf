"""Crash safety (issue #8.1): kill a running command, run it again, get what an uninterrupted run gets.

The slow tests start ``dasgen ...`` as a process of its own (forked from a server that has imported torch and
diffusers once: :mod:`helpers.forkserver`), ``SIGKILL`` it mid-way (chosen by progress on disk,
not by time, so a loaded machine only makes them slower), check that no file under its final name is torn, rerun
the same command and compare every byte with an uninterrupted run made in a copy of the workspace (in-process, one
thread like the subprocesses: the maths is deterministic, and so is a run's every byte). The die-point
test stops the process with ``os._exit`` right before chosen renames and deletions of ``translate``'s last phase
(fine-tune and finalize), which a timed kill would hit only by luck. The fast tests interrupt an export in-process
(Ctrl-C) for each format.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from conftest import write_tiny_params
from dasgen.cli import app
from dasgen.config import load_config
from dasgen.stages.scan import run_scan
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import is_temp_name
from dasgen.export.parts import IN_PROGRESS_FILE
from helpers.files import tree_bytes
from helpers.forkserver import shared_server
from helpers.synthetic import build_synthetic_domain, write_synthetic_source

# Domain 1 of the tiny workspace, enlarged to ~200 U-Net passes (seconds): all 12 source images one per batch, so
# every image is journalled on its own, 16 reverse steps each (t_1 = 100). t_N = 200 is above the shipped DDPM
# training range (diffusion.train.max_timestep: 100), so the range check is lifted: only the bytes matter here.
TRANSLATE_SETS = ("ptl.translate_batch_size=1", "ptl.images_per_domain=12", "ptl.t_final=200",
                  "ptl.steps_per_domain=16", "diffusion.train.max_timestep=null")
DIFFUSION_SETS = ("diffusion.train.steps=40", "diffusion.train.checkpoint_every=4")
EXPORT_IMAGES = 800  # the Cityscapes export of 800 images writes 3,200 files: a few seconds
RUN_DEPENDENT = ("metrics.json", "checksums.json")  # wall times, and the checksum record that covers them

# Runs the CLI but dies (os._exit, no clean-up, like SIGKILL) right before the first os.replace / os.rename whose
# destination, or shutil.rmtree whose path, ends with DASGEN_DIE_AT.
DIE_HOOK = """
import os, shutil, sys
suffix = os.environ["DASGEN_DIE_AT"]

def guard(real, position):
    def call(*args, **kwargs):
        if os.fspath(args[position]).endswith(suffix):
            os._exit(137)
        return real(*args, **kwargs)
    return call
os.replace, os.rename = guard(os.replace, 1), guard(os.rename, 1)
shutil.rmtree = guard(shutil.rmtree, 0)
from dasgen.cli import app
app(prog_name="dasgen", args=sys.argv[1:])
"""


def dasgen_args(root: Path, *args: str, sets: tuple[str, ...] = ()) -> list[str]:
    options = [item for s in sets for item in ("--set", s)]
    return ["--params", str(root / "params.yaml"), "--workspace", str(root), *options, *args]


def start(root: Path, *args: str, sets: tuple[str, ...] = (), log: str = "run"):
    """``dasgen ...`` as a process of its own, in the background; output goes to ``root/<log>.log``."""
    return shared_server().start(["dasgen", *dasgen_args(root, *args, sets=sets)], log=root / f"{log}.log")


def finish(process, root: Path, log: str = "run", timeout: float = 240) -> str:
    """Wait for ``process``; its log, asserting exit status 0."""
    code = process.wait(timeout=timeout)
    text = (root / f"{log}.log").read_text()
    assert code == 0, text
    return text


def run_dying_at(root: Path, suffix: str, *args: str, sets: tuple[str, ...] = ()) -> None:
    """Run the command under the die hook; assert it really died there (exit 137)."""
    code, output = shared_server().run(["die-hook", *dasgen_args(root, *args, sets=sets)], log=root / "die.log",
                                       env={"DASGEN_DIE_AT": suffix}, source=DIE_HOOK, timeout=240)
    assert code == 137, f"did not die before {suffix!r}:\n{output}"


def kill_when(process, ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """SIGKILL ``process`` as soon as ``ready()``; fail if it finished first (the kill point was missed)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"the process ended (exit {process.returncode}) before {what}")


def assert_no_torn_files(directory: Path) -> None:
    """Every file under its final name is complete: PNGs decode, JSON parses, Parquet and safetensors open.

    Temporary names (``.<name>.<hex>.tmp``) may hold partial data -- that is what they are for. Journals are
    append-only logs whose last line a kill may tear (readers ignore it): every other line must parse.
    """
    for path in directory.rglob("*"):
        if not path.is_file() or is_temp_name(path.name) or path.name.endswith(".log"):
            continue
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".safetensors":
            with safe_open(path, "pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        elif path.suffix == ".jsonl":
            for line in path.read_bytes().split(b"\n")[:-1]:
                json.loads(line)


def journal_lines(directory: Path) -> int:
    journal = directory / ".journal" / "rank-0.jsonl"
    return journal.read_bytes().count(b"\n") if journal.is_file() else 0


# -- translate --------------------------------------------------------------------------------------------------


def in_process(root: Path, *args: str, sets: tuple[str, ...] = ()) -> None:
    """The same command run uninterrupted through Typer's CliRunner (no interpreter start-up to pay)."""
    result = CliRunner().invoke(app, dasgen_args(root, *args, sets=sets))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def translate_reference(tiny_workspace, tmp_path_factory) -> dict[str, bytes]:
    """The bytes of an uninterrupted ``translate --domain 1`` (TRANSLATE_SETS), all but metrics.json."""
    root = tmp_path_factory.mktemp("translate-reference") / "ws"
    shutil.copytree(tiny_workspace, root)
    in_process(root, "translate", "--domain", "1", sets=TRANSLATE_SETS)
    return tree_bytes(Workspace(root).domain_dir(1), skip=RUN_DEPENDENT)


@pytest.mark.slow
def test_translate_killed_mid_run_resumes_to_identical_bytes(workspace, translate_reference):
    domain = Workspace(workspace).domain_dir(1)
    victim = start(workspace, "translate", "--domain", "1", sets=TRANSLATE_SETS)
    kill_when(victim, lambda: journal_lines(domain) >= 4, "4 images were journalled")

    assert not (domain / "index.parquet").exists()
    assert_no_torn_files(domain)
    done = journal_lines(domain)
    assert 4 <= done < 12
    finished = {p.name: p.read_bytes() for p in (domain / "images").glob("*.png")}

    log = finish(start(workspace, "translate", "--domain", "1", sets=TRANSLATE_SETS, log="rerun"), workspace,
                 log="rerun")
    assert "afresh" not in log  # resumed, not restarted
    metrics = json.loads((domain / "metrics.json").read_text())
    assert metrics["images"] == 12 and metrics["images_translated_this_run"] == 12 - done
    assert all((domain / "images" / name).read_bytes() == data for name, data in finished.items())
    assert tree_bytes(domain, skip=RUN_DEPENDENT) == translate_reference
    assert not any(is_temp_name(p.name) for p in domain.rglob("*"))


@pytest.mark.slow
def test_translate_dying_in_fine_tune_and_finalize_resumes_to_identical_bytes(workspace, translate_reference):
    """Die right before each late write of the stage; every rerun finishes the job, the last finds it complete."""
    ws = Workspace(workspace)
    domain = ws.domain_dir(1)
    command = ("translate", "--domain", "1")
    run_dying_at(workspace, "provenance.json", *command, sets=TRANSLATE_SETS)  # index + metrics.json written
    assert (domain / "index.parquet").is_file() and not (domain / "provenance.json").exists()
    assert_no_torn_files(domain)
    run_dying_at(workspace, "domain-001.json", *command, sets=TRANSLATE_SETS)  # artifact done, metrics/ not
    assert not ws.domain_metrics(1).exists()

    log = finish(start(workspace, *command, sets=TRANSLATE_SETS), workspace)
    assert "already complete" in log
    assert json.loads(ws.domain_metrics(1).read_text())["images"] == 12
    assert tree_bytes(domain, skip=RUN_DEPENDENT) == translate_reference

    (domain / ".trash/journal-0").mkdir(parents=True)  # what a kill during finalize's clean-up leaves
    in_process(workspace, *command, sets=TRANSLATE_SETS)
    assert not (domain / ".trash").exists()
    assert tree_bytes(domain, skip=RUN_DEPENDENT) == translate_reference


# -- train-diffusion --------------------------------------------------------------------------------------------


def _state_step(state: Path) -> int:
    try:
        return json.loads((state / "training_state.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def _kill_after_a_checkpoint(workspace: Path, command: str, sets: tuple[str, ...], state: Path, unit: str) -> int:
    """Start ``command`` of 40 steps, kill -9 it once its training state holds step 12 or later; the step saved."""
    victim = start(workspace, command, sets=sets)
    kill_when(victim, lambda: _state_step(state) >= 12, f"a checkpoint at {unit} 12 or later")
    saved = _state_step(state)
    assert 12 <= saved < 40
    return saved


@pytest.mark.slow
def test_train_diffusion_killed_resumes_from_its_checkpoint_to_the_same_model(workspace, tmp_path):
    reference_root = tmp_path / "reference"
    shutil.copytree(workspace, reference_root)
    ws = Workspace(workspace)
    saved = _kill_after_a_checkpoint(workspace, "train-diffusion", DIFFUSION_SETS, ws.diffusion_state, "step")
    assert_no_torn_files(ws.diffusion_state)
    log = finish(start(workspace, "train-diffusion", sets=DIFFUSION_SETS, log="rerun"), workspace, log="rerun")
    assert "diffusion: done" in log
    metrics = json.loads((ws.metrics / "diffusion.json").read_text())
    assert metrics["steps"] == 40 and metrics["resumed_from"] == saved  # from the last checkpoint, not from 0

    in_process(reference_root, "train-diffusion", sets=DIFFUSION_SETS)  # uninterrupted
    expected = Workspace(reference_root)
    assert json.loads((expected.metrics / "diffusion.json").read_text())["resumed_from"] is None
    assert tree_bytes(ws.diffusion_model) == tree_bytes(expected.diffusion_model)  # exact resumption
    assert (ws.metrics / "diffusion_loss.csv").read_bytes() == (expected.metrics / "diffusion_loss.csv").read_bytes()
    assert _state_step(ws.diffusion_state) == 40  # kept: a re-run with the same settings and code trains nothing


# -- train-g0 ---------------------------------------------------------------------------------------------------

G0_SETS = ("segmenter.source_train.iters=40", "segmenter.source_train.checkpoint_every=4")


@pytest.mark.slow
def test_train_g0_killed_resumes_from_its_checkpoint_to_the_same_model(workspace, tmp_path):
    ws = Workspace(workspace)
    shutil.rmtree(ws.g0_dir)  # the fixture's finished 6-iteration g_0: this test starts from nothing
    reference_root = tmp_path / "reference"
    shutil.copytree(workspace, reference_root)
    saved = _kill_after_a_checkpoint(workspace, "train-g0", G0_SETS, ws.g0_state, "iteration")
    assert_no_torn_files(ws.g0_dir)
    log = finish(start(workspace, "train-g0", sets=G0_SETS, log="rerun"), workspace, log="rerun")
    assert f"g_0: resuming from iteration {saved} of 40" in log
    assert json.loads((ws.metrics / "g0.json").read_text())["resumed_from"] == saved

    in_process(reference_root, "train-g0", sets=G0_SETS)  # uninterrupted
    expected = Workspace(reference_root)
    assert json.loads((expected.metrics / "g0.json").read_text())["resumed_from"] is None
    assert tree_bytes(ws.g0_dir) == tree_bytes(expected.g0_dir)  # g_0, its sidecar and the kept state: exact


# -- export -----------------------------------------------------------------------------------------------------


def export_workspace(root: Path, count: int, monkeypatch) -> Path:
    """A workspace holding a synthetic GTA5-like source (scanned) and a finished last domain of ``count`` images
    (no models: export needs none). fsync is skipped while building it: this is test input, not the product."""
    ids = [f"{i:05d}" for i in range(1, count + 1)]
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        write_synthetic_source(root / "source", ids, height=24, width=48)
        config = load_config(write_tiny_params(root, data={"source": {"kind": "gta5", "root": "source"}}))
        ws = Workspace(root)
        run_scan(config, ws)
        build_synthetic_domain(ws.domain_dir(2, 2), ids, height=16, width=32, domain=2)
    return root


@pytest.mark.slow
def test_cityscapes_export_killed_mid_run_resumes_to_identical_bytes(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", EXPORT_IMAGES, monkeypatch)
    command = ("export", "--format", "cityscapes", "--out")
    out = tmp_path / "export"
    victim = start(root, *command, str(out))
    images = out / "leftImg8bit"
    kill_when(victim, lambda: images.is_dir() and sum(1 for _ in images.rglob("*.png")) >= 100,
              "100 images were exported")

    assert (out / IN_PROGRESS_FILE).is_file() and not (out / "manifest.json").exists()
    assert_no_torn_files(out)
    log = finish(start(root, *command, str(out), log="rerun"), root, log="rerun")  # same command, no --force
    assert "export written" in log
    in_process(root, *command, str(tmp_path / "reference"))
    assert tree_bytes(out) == tree_bytes(tmp_path / "reference")
    assert not (out / IN_PROGRESS_FILE).exists()
    runner = CliRunner()
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0


@pytest.fixture(scope="module")
def small_export_workspace(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return export_workspace(tmp_path_factory.mktemp("export-ws") / "ws", 40, monkeypatch)


@pytest.mark.parametrize("fmt", ["cityscapes", "parquet", "hdf5"])
def test_interrupted_export_is_redone_by_the_same_command(small_export_workspace, tmp_path, monkeypatch, fmt):
    from dasgen.export.run import EXPORTERS

    root = small_export_workspace
    runner = CliRunner()

    def export(out: Path, *extra: str):
        return runner.invoke(app, dasgen_args(root, "export", "--format", fmt, "--out", str(out), *extra))

    reference = export(tmp_path / "reference")
    assert reference.exit_code == 0, reference.output

    exporter, calls = EXPORTERS[fmt], []
    original_add = exporter.add

    def add_then_interrupt(self, item):
        if len(calls) == 25:
            raise KeyboardInterrupt  # Ctrl-C after 25 images
        calls.append(item.row["id"])
        return original_add(self, item)

    monkeypatch.setattr(exporter, "add", add_then_interrupt)
    out = tmp_path / "out"
    result = export(out)
    assert result.exit_code == 130 and "run the same command again" in result.output
    left = sorted(p.name for p in out.iterdir())
    if fmt == "cityscapes":  # 25 images' files, marked unfinished
        assert IN_PROGRESS_FILE in left and "manifest.json" not in left and len(left) > 1
    else:  # the unfinished shard / HDF5 file was removed, and with it the marker: an empty directory is fresh
        assert left == []
    monkeypatch.setattr(exporter, "add", original_add)

    result = export(out)  # no --force: the directory holds our own unfinished export
    assert result.exit_code == 0, result.output
    assert tree_bytes(out) == tree_bytes(tmp_path / "reference")
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0

    result = export(out)  # a finished export is never overwritten without --force
    assert result.exit_code == 1 and "not empty" in result.output
    assert tree_bytes(out) == tree_bytes(tmp_path / "reference")
    assert export(out, "--force").exit_code == 0


def test_export_marker_is_replaced_by_the_manifest_in_one_rename(small_export_workspace, tmp_path, monkeypatch):
    """The only moment without the marker is after the rename that creates manifest.json."""
    seen = []
    real_replace = os.replace

    def watch(src, dst, *args, **kwargs):
        if Path(dst).name == "manifest.json":
            seen.append(Path(src).name)
            assert not Path(dst).exists()
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", watch)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, dasgen_args(small_export_workspace, "export", "--format", "parquet",
                                                 "--out", str(out)))
    assert result.exit_code == 0, result.output
    assert seen == [IN_PROGRESS_FILE]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "id2label.json", "manifest.json"]
    assert not any(is_temp_name(p.name) for p in out.rglob("*"))


def _interrupt_export_after(monkeypatch, fmt: str, images: int) -> None:
    """Make the next export of ``fmt`` stop with Ctrl-C after ``images`` images."""
    from dasgen.export.run import EXPORTERS

    exporter, calls = EXPORTERS[fmt], []
    original_add = exporter.add

    def add_then_interrupt(self, item):
        if len(calls) == images:
            raise KeyboardInterrupt
        calls.append(item.row["id"])
        return original_add(self, item)

    monkeypatch.setattr(exporter, "add", add_then_interrupt)


def test_rerun_of_an_interrupted_export_keeps_files_added_meanwhile(small_export_workspace, tmp_path, monkeypatch):
    """An unfinished export may remove only what its own journal lists: a user's file added to its directory
    after the interruption (at the top or inside one of the export's own folders) survives the rerun."""
    root, runner = small_export_workspace, CliRunner()

    def export(out: Path):
        return runner.invoke(app, dasgen_args(root, "export", "--format", "cityscapes", "--out", str(out)))

    assert export(tmp_path / "reference").exit_code == 0
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_export_after(patch, "cityscapes", 10)
        assert export(out).exit_code == 130
    assert (out / IN_PROGRESS_FILE).is_file()
    mine = {out / "notes.txt": b"my notes", out / "leftImg8bit" / "mine.png": b"my picture"}
    for path, data in mine.items():
        path.write_bytes(data)

    result = export(out)  # the same command: refused, naming the file it did not write
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "leftImg8bit/mine.png" in result.stderr or "notes.txt" in result.stderr, result.stderr
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert (out / IN_PROGRESS_FILE).is_file()  # still resumable once the user's files are moved away

    for path in mine:
        path.unlink()
    written = sorted((out / "leftImg8bit").rglob("*.png"))[0]
    written.write_bytes(b"the user's own picture, saved over one the export wrote")
    result = export(out)  # a journalled file with other content than the export wrote is not the export's either
    assert result.exit_code == 1 and "was changed after the interrupted export wrote it" in result.stderr
    assert written.read_bytes().startswith(b"the user's own picture")

    written.unlink()
    result = export(out)
    assert result.exit_code == 0, result.output
    assert tree_bytes(out) == tree_bytes(tmp_path / "reference")


@pytest.mark.parametrize("marker", ["", "unfinished dasgen export: rerun the same command to redo it\n",
                                    '{"dasgen_export_journal": 1}\n{"path": "../outside.txt"}\n'])
@pytest.mark.parametrize("force", [False, True])
def test_a_planted_incomplete_marker_never_deletes_a_foreign_file(small_export_workspace, tmp_path, marker, force):
    """A ``.dasgen-export-incomplete`` that no export of ours wrote (empty, the old one-line text, or a journal
    naming a path outside the directory) makes the directory foreign: refused, nothing deleted."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    (out / IN_PROGRESS_FILE).write_text(marker)
    (tmp_path / "outside.txt").write_text("outside")
    before = tree_bytes(tmp_path)
    args = ["--force"] if force else []
    result = CliRunner().invoke(app, dasgen_args(small_export_workspace, "export", "--format", "cityscapes",
                                                 "--out", str(out), *args))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "error:" in result.stderr and str(out) in result.stderr
    assert tree_bytes(tmp_path) == before
