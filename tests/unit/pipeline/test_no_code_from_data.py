"""No code from data (issue #8.3): files a user was handed are read as data, never run.

- the package never unpickles: no pickle import, no ``torch.load`` without ``weights_only=True`` (an AST scan);
- pickle checkpoints (``.pt``/``.pth``/``.pkl``/``.bin``, or pickle bytes behind a ``.safetensors`` name) are refused
  with one line, and the payload, which would create a file if it ever ran, never runs;
- a checkpoint's sidecar cannot choose code to import;
- Pillow's decompression-bomb guard stays on at the documented limit;
- ids and paths from an index, a manifest or the scan record can never write, or read, outside their directory.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import dasgen
from dasgen.datasets.base import MAX_IMAGE_PIXELS
from dasgen.segment.checkpoint import sidecar_path
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import sha256_file
from helpers.fake_trees import write_bomb_png
from test_bad_inputs import error_line, gta5_workspace, invoke
from test_crash_safety import export_workspace

PACKAGE = Path(dasgen.__file__).parent
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


# -- the package ----------------------------------------------------------------------------------------------------


def code_from_data_calls(source: str, filename: str = "<string>") -> list[str]:
    """Lines of ``source`` that could run code from a file: unpickler imports, ``torch.load`` without
    ``weights_only=True``, ``numpy.load(allow_pickle=True)``, ``yaml.load``/``unsafe_load``, ``eval``/``exec``,
    and switching Pillow's decompression-bomb guard off."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            guarded = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
            if func.endswith("torch.load") or func == "load" and "weights_only" in keywords:
                if not guarded:
                    found.append(f"{where} {func}(...) without weights_only=True")
            elif func in ("np.load", "numpy.load") and "allow_pickle" in keywords:
                found.append(f"{where} {func}(allow_pickle=...)")
            elif func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec"):
                found.append(f"{where} {func}(...)")
        elif isinstance(node, ast.Assign) and any(ast.unparse(t).endswith("MAX_IMAGE_PIXELS") for t in node.targets):
            if isinstance(node.value, ast.Constant) and node.value.value is None:
                found.append(f"{where} decompression-bomb guard switched off")
    return found


def test_the_checker_finds_what_it_looks_for():
    bad = ("import pickle\nfrom dill import loads\nimport torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
           "np.load(f, allow_pickle=True)\nyaml.load(t)\neval(s)\nImage.MAX_IMAGE_PIXELS = None\n")
    flagged = sorted(int(hit.split(":")[1].split()[0]) for hit in code_from_data_calls(bad))
    assert flagged == [1, 2, 4, 5, 6, 7, 8, 9]  # every line but `import torch`
    good = "import torch\ntorch.load(f, weights_only=True)\nyaml.safe_load(t)\nImage.MAX_IMAGE_PIXELS = 10\n"
    assert code_from_data_calls(good) == []


def test_the_package_never_runs_code_from_a_file():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [hit for path in files for hit in code_from_data_calls(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert found == []
    # and the plain grep the issue asks for
    text = {path: path.read_text() for path in files}
    assert not [p for p, t in text.items() if re.search(r"^\s*(import|from)\s+(c?pickle|_pickle)\b", t, re.M)]
    assert not [p for p, t in text.items() for call in re.findall(r"torch\.load\([^)]*\)", t)
                if "weights_only=True" not in call]


# -- pickle checkpoints ---------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates ``sentinel``: proof that the file was run rather than read."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def _pickle_file(path: Path, sentinel: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(sentinel)))
    assert not sentinel.exists()
    return path


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt", ".bin"])
def test_pickle_weights_for_evaluate_are_refused(workspace, tmp_path, suffix):
    sentinel = tmp_path / "ran"
    weights = _pickle_file(tmp_path / f"g{suffix}", sentinel)
    error_line(invoke(workspace, "evaluate", str(weights)), f"{weights}: refusing pickle-based checkpoint ({suffix})",
               "convert it to safetensors")
    assert not sentinel.exists()


def test_pickle_initial_weights_for_g0_are_refused(workspace, tmp_path):
    sentinel = tmp_path / "ran"
    _pickle_file(workspace / "init.pkl", sentinel)
    error_line(invoke(workspace, "--set", "segmenter.weights=init.pkl", "train-g0"),
               "init.pkl: refusing pickle-based checkpoint (.pkl)")
    assert not sentinel.exists()


def test_pickle_behind_a_safetensors_name_is_refused(workspace, tmp_path):
    sentinel = tmp_path / "ran"
    g0 = Workspace(workspace).segmenter_path(0)
    _pickle_file(g0, sentinel)
    sidecar = json.loads(sidecar_path(g0).read_text())
    sidecar_path(g0).write_text(json.dumps({**sidecar, "weights_sha256": sha256_file(g0)}))
    error_line(invoke(workspace, "evaluate", str(g0)), f"{g0}: not a readable safetensors file")
    error_line(invoke(workspace, "translate", "--domain", "1"), f"{g0}: not a readable safetensors file")
    assert not sentinel.exists()


def test_pickle_only_pretrained_diffusion_model_is_refused(workspace, tmp_path):
    sentinel = tmp_path / "ran"
    model = workspace / "pretrained"
    shutil.copytree(Workspace(workspace).diffusion_model, model)
    (model / "diffusion_pytorch_model.safetensors").unlink()
    _pickle_file(model / "diffusion_pytorch_model.bin", sentinel)
    error_line(invoke(workspace, "--set", "diffusion.pretrained=pretrained", "train-diffusion"),
               "diffusion_pytorch_model.safetensors: weights file missing (only a pickle .bin exists")
    assert not sentinel.exists()


def test_a_sidecar_cannot_choose_code_to_import(workspace, tmp_path):
    g0 = Workspace(workspace).segmenter_path(0)
    sidecar = json.loads(sidecar_path(g0).read_text())
    sidecar_path(g0).write_text(json.dumps({**sidecar, "arch": "os:system"}))
    error_line(invoke(workspace, "evaluate", str(g0)), f"{g0}: architecture 'os:system', expected 'toy'")


# -- decompression bombs --------------------------------------------------------------------------------------------


def test_decompression_bomb_guard_stays_on_at_the_documented_limit(tmp_path):
    root = gta5_workspace(tmp_path)
    write_bomb_png(root / "src/images/00012.png", width=9000, height=9000)  # 81 Mpx claimed by a 100-byte file
    Image.open(root / "src/images/00001.png").save(root / "src/labels/00012.png")
    result = invoke(root, "scan")
    assert result.exit_code == 0, result.output
    assert "skipped 00012 (images/00012.png): image refused by the decompression-bomb guard" in result.stderr
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 2048 * 4096 * 4  # 33.5 Mpx: refused above twice that


# -- ids and paths from files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../../escaped", "/tmp/escaped", "..", ".hidden", "a\\b"])
def test_ids_from_the_scan_record_cannot_leave_the_domain(workspace, bad_id):
    ws = Workspace(workspace)
    record = json.loads(ws.source_pairs.read_text())
    record["entries"][0]["id"] = bad_id
    ws.source_pairs.write_text(json.dumps(record))
    before = sorted(p for p in workspace.parent.rglob("*") if "domains" not in p.parts)
    error_line(invoke(workspace, "--set", "ptl.images_per_domain=12", "translate", "--domain", "1"),
               f"image id {bad_id!r} cannot name a file")
    after = sorted(p for p in workspace.parent.rglob("*") if "domains" not in p.parts)
    assert after == before
    assert not Path("/tmp/escaped.png").exists()


def _rewrite_index(domain: Path, change) -> None:
    """Tamper with a domain's index as a stranger would: consistently, its checksum record updated too."""
    table = pq.read_table(domain / "index.parquet")
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), domain / "index.parquet")
    record = json.loads((domain / "checksums.json").read_text())
    record["files"]["index.parquet"] = sha256_file(domain / "index.parquet")
    (domain / "checksums.json").write_text(json.dumps(record))


@pytest.mark.parametrize("split", ["../../escaped", "/tmp/escaped", "a/../../b", ".."])
def test_split_names_from_an_index_cannot_leave_the_export(tmp_path, monkeypatch, split):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    domain = Workspace(root).domain_dir(2, 2)
    _rewrite_index(domain, lambda rows: rows[0].update(split=split))
    for fmt in ("cityscapes", "parquet"):
        out = tmp_path / "deep" / "er" / fmt
        error_line(invoke(root, "export", "--format", fmt, "--out", str(out)), f"has split {split!r}",
                   "cannot name a folder inside the export")
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"] and not Path("/tmp/escaped").exists()


@pytest.mark.parametrize("image_id", ["../../escaped", ".hidden", "a/b"])
def test_ids_from_an_index_never_reach_the_exported_file_names(tmp_path, monkeypatch, image_id):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    domain = Workspace(root).domain_dir(2, 2)
    _rewrite_index(domain, lambda rows: rows[0].update(id=image_id))
    for fmt in ("parquet", "cityscapes", "hdf5"):
        out = tmp_path / fmt
        error_line(invoke(root, "export", "--format", fmt, "--out", str(out)), f"image id {image_id!r}",
                   "cannot name a file")
        assert not out.exists()


def test_image_paths_from_an_index_are_never_opened_outside_the_domain(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    domain = Workspace(root).domain_dir(2, 2)
    secret = tmp_path / "secret.png"
    shutil.copyfile(domain / "images/00001.png", secret)  # same bytes: a read would pass the sha256 check
    _rewrite_index(domain, lambda rows: rows[0].update(image="../../../../secret.png"))
    error_line(invoke(root, "export", "--out", str(tmp_path / "out")), "unsafe path '../../../../secret.png'")
    result = invoke(root, "verify", str(domain))
    assert result.exit_code == 1 and "invalid (1): ../../../../secret.png" in result.stdout


def test_paths_from_a_manifest_are_never_opened_outside_the_export(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    out = tmp_path / "out"
    assert invoke(root, "export", "--out", str(out)).exit_code == 0
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the export")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["../outside.txt"] = sha256_file(outside)
    manifest["files"][str(outside)] = sha256_file(outside)
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = invoke(root, "verify", str(out))
    assert result.exit_code == 1 and "invalid (2)" in result.stdout and "1 files" not in result.stdout


def test_decompression_bomb_inside_a_domain_is_refused_by_export(tmp_path, monkeypatch):
    """A domain from a stranger whose index vouches for a bomb PNG: resizing exports decode it, and refuse it."""
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    domain = Workspace(root).domain_dir(2, 2)
    write_bomb_png(domain / "images/00001.png", width=9000, height=9000)
    digest = sha256_file(domain / "images/00001.png")
    _rewrite_index(domain, lambda rows: rows[0].update(sha256=digest))
    for extra in (("--format", "hdf5"), ("--size", "source")):
        error_line(invoke(root, "export", *extra, "--out", str(tmp_path / "out")),
                   "image 00001 (images/00001.png): refused by the decompression-bomb guard")
