"""Nothing finished is lost to a bad input: each command validates what it reads before it removes or overwrites
anything, and refuses to write over files it did not make. The table in docs/bad-inputs.md names these tests."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import write_tiny_params
from dasgen.cli import app
from dasgen.pipeline.workspace import Workspace
from test_bad_inputs import _flip_byte, error_line, invoke
from helpers.files import tree_bytes

runner = CliRunner()


def _truncate_one_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


@pytest.mark.parametrize("damage, fragment", [(_flip_byte, "sha256 does not match its sidecar"),
                                              (_truncate_one_byte, "not a readable safetensors file")],
                         ids=["flipped-byte", "truncated"])
def test_a_damaged_g_prev_leaves_the_finished_domain_untouched(two_domains_ws, damage, fragment):
    ws = Workspace(two_domains_ws)
    domain = ws.domain_dir(2, 2)
    before = tree_bytes(domain)
    damage(ws.segmenter_path(1, 2))
    error_line(invoke(two_domains_ws, "translate", "--domain", "2"), str(ws.segmenter_path(1, 2)), fragment)
    assert tree_bytes(domain) == before


# -- dasgen toy --out ---------------------------------------------------------------------------------------------


def _foreign_gta5(directory: Path, count: int) -> None:
    """A user's own GTA5-named pairs (``00001.png`` ...): exactly the names the toy generator writes."""
    for folder in ("images", "labels"):
        (directory / "source" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            (directory / "source" / folder / f"{i:05d}.png").write_bytes(f"user's {folder} {i}".encode())


@pytest.fixture
def no_toy_writes(monkeypatch):
    """Fail loudly, before a byte is written, should the toy generator try to write (a regression writing into
    ``/`` must not reach the disk)."""
    from dasgen.datasets.toy import writing

    def refuse(path, *args, **kwargs):
        raise AssertionError(f"the toy generator tried to write {path}")

    monkeypatch.setattr(writing, "atomic_write_bytes", refuse)
    monkeypatch.setattr(writing, "atomic_write_json", refuse)
    monkeypatch.setattr(writing, "atomic_write_text", refuse)


def test_toy_out_onto_a_foreign_dataset_deletes_and_overwrites_nothing(two_domains_ws, tmp_path):
    mine = tmp_path / "gta5"
    _foreign_gta5(mine, 15)  # more pairs than the toy writes (12): the extra ones were pruned, the rest overwritten
    before = tree_bytes(mine)
    error_line(invoke(two_domains_ws, "toy", "--out", str(mine)), f"{mine}", "not empty", "no dasgen toy")
    assert tree_bytes(mine) == before


@pytest.mark.parametrize("where, fragment", [("data/domains/002", "the PTL domains"),
                                             ("data/g0", "the source segmenter g_0"),
                                             ("metrics", "the pipeline's metrics")])
def test_toy_out_onto_a_workspace_artifact_is_refused(two_domains_ws, where, fragment, no_toy_writes):
    before = tree_bytes(two_domains_ws)
    error_line(invoke(two_domains_ws, "toy", "--out", str(two_domains_ws / where)),
               "refusing to write the toy datasets into",
               fragment)
    assert tree_bytes(two_domains_ws) == before


def test_toy_out_onto_the_filesystem_root_is_refused(two_domains_ws, no_toy_writes):
    error_line(invoke(two_domains_ws, "toy", "--out", "/"), "refusing to write the toy datasets into /",
               "filesystem root")


# -- translate: read-only workspace, domain directory behind a link -----------------------------------------------


def _read_only(monkeypatch) -> None:
    """Make every directory creation and removal fail as on a read-only mount (root ignores chmod here)."""
    from test_bad_inputs import _failing

    for name in ("mkdir", "unlink", "rmdir"):
        _failing(monkeypatch, name, errno.EROFS, lambda path, calls: True)


def test_translate_on_a_read_only_workspace_is_one_line(two_domains_ws, monkeypatch):
    ws = Workspace(two_domains_ws)
    before = tree_bytes(ws.data)
    _read_only(monkeypatch)  # params changed: the stale domain 2 would be cleared
    error_line(invoke(two_domains_ws, "--set", "sgg.lambda=40", "translate", "--domain", "2"), "cannot write",
               "Read-only file system")
    monkeypatch.undo()
    assert tree_bytes(ws.data) == before
    shutil.rmtree(ws.domain_dir(2, 2))
    _read_only(monkeypatch)  # a domain not yet started: its directory cannot be made
    error_line(invoke(two_domains_ws, "translate", "--domain", "2"), f"cannot write {ws.domain_dir(2, 2)}",
               "Read-only file system")


def test_a_domain_behind_a_link_is_never_cleared_through_it(two_domains_ws, tmp_path):
    ws = Workspace(two_domains_ws)
    elsewhere = tmp_path / "bigger-disk" / "002"
    elsewhere.parent.mkdir()
    shutil.move(ws.domain_dir(2, 2), elsewhere)
    ws.domain_dir(2, 2).symlink_to(elsewhere, target_is_directory=True)
    before = tree_bytes(elsewhere)
    result = invoke(two_domains_ws, "translate", "--domain", "2")  # same params: the linked domain is complete
    assert result.exit_code == 0 and "already complete" in result.stderr, result.output
    error_line(invoke(two_domains_ws, "--set", "sgg.lambda=40", "translate", "--domain", "2"),
               f"{ws.domain_dir(2, 2)}: a symbolic link", "never clears a directory through a link")
    assert tree_bytes(elsewhere) == before and ws.domain_dir(2, 2).is_symlink()
    for path in elsewhere.iterdir():  # emptied by the user: the link is used as it is
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = invoke(two_domains_ws, "--set", "sgg.lambda=40", "translate", "--domain", "2")
    assert result.exit_code == 0, result.output
    assert ws.domain_dir(2, 2).is_symlink() and (elsewhere / "index.parquet").is_file()


# -- dasgen ablate ------------------------------------------------------------------------------------------------


def _write_spec(directory: Path) -> Path:
    write_tiny_params(directory)
    spec = {"base": "params.yaml", "out": "abl", "results": "results", "seeds": [0], "set": {"toy.n_source": 8},
            "variants": {"full": {"label": "Ours (full)", "set": {}}}}
    (directory / "ablation.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory / "ablation.yaml"


def test_a_report_of_no_runs_never_replaces_a_report_with_rows(tmp_path):
    """`ablate --report-only` in a fresh clone: the committed reports have rows, the work tree holds no run."""
    spec_path = _write_spec(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    committed = {"ablation.json": json.dumps({"runs": [{"seed": 0, "variant": "full", "target_miou": 0.5}],
                                              "summary": []}).encode(),
                 "ablation.csv": b"seed,variant\n0,full\n", "ablation.md": b"| Ours (full) | 50.0 |\n"}
    for name, data in committed.items():
        (results / name).write_bytes(data)
    result = runner.invoke(app, ["ablate", "--spec", str(spec_path), "--report-only"])
    error_line(result, f"{results / 'ablation.json'}: holds 1 finished run", "no finished run",
               f"dasgen ablate --spec {spec_path}")
    assert tree_bytes(results) == committed


@pytest.mark.parametrize("spelling", ["shared", "through-a-variant-link"])
def test_ablate_ddpm_naming_the_shared_ddpm_keeps_it(tiny_workspace, tmp_path, spelling):
    from rich.console import Console

    from dasgen.research.ablate import load_spec, prepare_ddpm

    spec = load_spec(_write_spec(tmp_path))
    shared = Workspace(spec.out / "shared")
    shutil.copytree(Workspace(tiny_workspace).diffusion_dir, shared.diffusion_dir)
    before = tree_bytes(shared.diffusion_model)
    given = shared.diffusion_model
    if spelling == "through-a-variant-link":  # <out>/seed-0/full/data/diffusion -> the shared one
        link = spec.out / "seed-0" / "full" / "data" / "diffusion"
        link.parent.mkdir(parents=True)
        link.symlink_to(shared.diffusion_dir, target_is_directory=True)
        given = link / "model"
    sha = prepare_ddpm(spec, shared, ddpm=given, console=Console(stderr=True))
    assert tree_bytes(shared.diffusion_model) == before
    assert sha == hashlib.sha256(before["diffusion_pytorch_model.safetensors"]).hexdigest()
