"""Bad inputs through the CLI (issue #8.2 and #8.4): each gets one clear error line (file or key named, exit 1) or
a reported skip, and nothing already written is lost. The table in docs/bad-inputs.md names these tests.

Commands run in-process with Typer's CliRunner (so disk-full and permission errors can be simulated by
monkeypatching ``os``); an uncaught exception would show as ``result.exception`` other than ``SystemExit``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import write_tiny_params
from dasgen.cli import app
from dasgen.labels import id_to_train_id, synthia_to_id
from dasgen.segment.checkpoint import save_segmenter, sidecar_path
from dasgen.segment.models import build_segmenter
from dasgen.pipeline.workspace import Workspace
from helpers.files import tree_bytes
from helpers.fake_trees import (make_gta5_tree, make_synthia_tree, scene_image, scene_label, truncate, write_label, write_png16,
                        write_rgb)
from test_crash_safety import export_workspace

runner = CliRunner()
GOOD_IDS = ["00001", "00002", "00003", "00004"]  # make_gta5_tree(flaws=False)


def invoke(root: Path, *args: str):
    return runner.invoke(app, ["--params", str(root / "params.yaml"), "--workspace", str(root), *args])


def error_line(result, *fragments: str) -> str:
    """Assert a handled failure: exit 1, no traceback, exactly one ``error:`` line holding every fragment."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a DasgenError, not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# -- source datasets: scan ----------------------------------------------------------------------------------------


def _pair(seed: int = 12, height: int = 20, width: int = 32):
    rng = np.random.default_rng(seed)
    label = scene_label(rng, height, width)
    return scene_image(rng, label), label


def _good(src: Path) -> None:
    image, label = _pair()
    write_rgb(src / "images/00012.png", image)
    write_label(src / "labels/00012.png", label, mode="P")


def _corrupt(src: Path) -> None:
    _good(src)
    path = src / "images/00012.png"
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start:start + 40] = bytes(b ^ 0xFF for b in data[start:start + 40])  # bit rot inside the pixel data
    path.write_bytes(bytes(data))


def _label_with(src: Path, change) -> None:
    image, label = _pair()
    write_rgb(src / "images/00012.png", image)
    write_label(src / "labels/00012.png", change(label), mode="P")


def _outside(label):
    label = label.copy()
    label[0, :3] = 40
    return label


# flaw -> (writer of pair 00012, file at fault, fragment of the reason)
FLAWS = {
    "corrupt-png": (_corrupt, "images/00012.png", "cannot decode image (truncated or corrupt file)"),
    "not-a-png": (lambda src: (_good(src), (src / "images/00012.png").write_bytes(b"GIF89a garbage")),
                  "images/00012.png", "image is not a readable image file"),
    "truncated-png": (lambda src: (_good(src), truncate(src / "images/00012.png")), "images/00012.png",
                      "cannot decode image (truncated or corrupt file)"),
    "truncated-label": (lambda src: (_good(src), truncate(src / "labels/00012.png")), "labels/00012.png",
                        "cannot decode label (truncated or corrupt file)"),
    "size-mismatch": (lambda src: _label_with(src, lambda label: label[:18]), "labels/00012.png",
                      "size mismatch: image is 32x20 but label is 32x18"),
    "label-ids-outside-table": (lambda src: _label_with(src, _outside), "labels/00012.png",
                                "label ids outside 0..33: 40"),
    "label-saved-as-rgb": (lambda src: (_good(src), write_rgb(src / "labels/00012.png", _pair()[0])),
                           "labels/00012.png", "label is a mode RGB image; expected mode P"),
    "image-without-label": (lambda src: write_rgb(src / "images/00012.png", _pair()[0]), "images/00012.png",
                            "image without label: labels/00012.png is missing"),
    "blank-frame": (lambda src: (_good(src), write_rgb(src / "images/00012.png", np.zeros((20, 32, 3), np.uint8))),
                    "images/00012.png", "blank frame"),
    "same-id-two-files": (lambda src: (_good(src), write_rgb(src / "images/00012.PNG", _pair(seed=3)[0])),
                          "images/00012.PNG", "several images share the id (up to letter case): images/00012.PNG, "
                          "images/00012.png"),
}


def gta5_workspace(root: Path, flaw: str | None = None, **params) -> Path:
    """A workspace whose source is a clean fake GTA5 tree at ``root/src`` plus pair 00012 with ``flaw``."""
    make_gta5_tree(root / "src", flaws=False, split_mat=False)
    if flaw is not None:
        FLAWS[flaw][0](root / "src")
    write_tiny_params(root, data={"source": {"kind": "gta5", "root": "src"}, **params})
    return root


@pytest.mark.parametrize("flaw", FLAWS)
def test_bad_source_pair_is_skipped_and_reported(tmp_path, flaw):
    root = gta5_workspace(tmp_path, flaw)
    _, file, reason = FLAWS[flaw]
    result = invoke(root, "scan")
    assert result.exit_code == 0, result.output
    assert f"skipped 00012 ({file}): {reason}" in result.stderr
    assert "source: 4 usable pairs, 1 skipped" in result.stderr
    record = json.loads(Workspace(root).source_pairs.read_text())
    assert [e["id"] for e in record["entries"]] == GOOD_IDS
    assert [s["id"] for s in record["skipped"]] == ["00012"] and reason in record["skipped"][0]["reason"]


@pytest.mark.parametrize("flaw", FLAWS)
def test_bad_source_pair_fails_a_strict_scan_keeping_the_last_good_scan(tmp_path, flaw):
    root = gta5_workspace(tmp_path, None, bad_pairs="fail")
    assert invoke(root, "scan").exit_code == 0
    before = Workspace(root).source_pairs.read_bytes()
    FLAWS[flaw][0](root / "src")
    _, file, reason = FLAWS[flaw]
    error_line(invoke(root, "scan"), f"src/{file}: {reason}")
    assert Workspace(root).source_pairs.read_bytes() == before


def test_synthia_labels_are_decoded_as_16_bit_and_8_bit_rgb_labels_are_skipped(tmp_path):
    """Pillow reads SYNTHIA's 16-bit labels as RGB by mistake (every class would be 0); dasgen decodes them
    exactly, and a label someone converted to 8-bit RGB is a reported skip, like the other broken pairs."""
    tree = make_synthia_tree(tmp_path / "src", flaws=True)
    write_tiny_params(tmp_path, data={"source": {"kind": "synthia", "root": "src"}})
    result = invoke(tmp_path, "scan")
    assert result.exit_code == 0, result.output
    for image_id, fragment in tree.bad.items():
        assert f"skipped {image_id}" in result.stderr and fragment in result.stderr
    record = json.loads(Workspace(tmp_path).source_pairs.read_text())
    assert [e["id"] for e in record["entries"]] == tree.good
    expected = np.mean([(np.unique(id_to_train_id(synthia_to_id(tree.labels[i]))) != 255).sum() for i in tree.good])
    assert expected > 3 and record["mean_classes_per_image"] == round(float(expected), 2)
    for other in ("0000004", "0000005", "0000006"):  # leave the 8-bit label as the only flaw
        (tmp_path / "src/RGB" / f"{other}.png").unlink()
    error_line(invoke(tmp_path, "--set", "data.bad_pairs=fail", "scan"), "src/GT/LABELS/0000003.png",
               tree.bad["0000003"])


def test_a_16_bit_grey_alpha_synthia_label_is_a_wrong_channel_layout(tmp_path):
    tree = make_synthia_tree(tmp_path / "src", flaws=False)
    first = tree.good[0]
    classes = tree.labels[first].astype(np.uint16)[..., None]  # (H, W, 1) the SYNTHIA class ids
    write_png16(tmp_path / "src/GT/LABELS" / f"{first}.png", np.concatenate([classes, classes * 0 + 65535], axis=2))
    write_tiny_params(tmp_path, data={"source": {"kind": "synthia", "root": "src"}})
    result = invoke(tmp_path, "scan")
    assert result.exit_code == 0, result.output
    assert (f"skipped {first} (GT/LABELS/{first}.png): label has a wrong channel layout (grey+alpha)"
            in result.stderr), result.stderr


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "src/images").mkdir(parents=True)
    (tmp_path / "src/labels").mkdir()
    write_tiny_params(tmp_path, data={"source": {"kind": "gta5", "root": "src"}})
    error_line(invoke(tmp_path, "scan"), "src: no usable gta5 entries")
    assert not Workspace(tmp_path).source_pairs.exists()


def test_dataset_of_only_broken_pairs_is_an_error(tmp_path):
    src = tmp_path / "src"
    make_gta5_tree(src, flaws=False, split_mat=False)
    for image in (src / "images").iterdir():
        truncate(image)
    write_tiny_params(tmp_path, data={"source": {"kind": "gta5", "root": "src"}})
    error_line(invoke(tmp_path, "scan"), "src: no usable source pairs, all 4 skipped (first: 00001: cannot decode")
    assert not Workspace(tmp_path).source_pairs.exists()


def test_dataset_root_that_does_not_exist(tmp_path):
    write_tiny_params(tmp_path, data={"source": {"kind": "gta5", "root": "nowhere"}})
    error_line(invoke(tmp_path, "scan"), "nowhere: dataset root does not exist")
    error_line(invoke(tmp_path, "inspect", str(tmp_path / "nowhere"), "--kind", "gta5"), "dataset root does not exist")
    error_line(invoke(tmp_path, "train-diffusion"), "data/toy/target: dataset root does not exist")


def test_dataset_root_of_another_layout(tmp_path):
    make_gta5_tree(tmp_path / "src", flaws=False, split_mat=False)
    write_tiny_params(tmp_path, data={"source": {"kind": "synthia", "root": "src"}})
    error_line(invoke(tmp_path, "scan"), "missing directory; is", "a synthia dataset root?")


def test_source_image_broken_after_the_scan_stops_translate_keeping_finished_images(workspace):
    """A file that rots between scan and translate: one line naming it; the images of earlier batches stay."""
    record = json.loads(Workspace(workspace).source_pairs.read_text())
    last = record["entries"][-1]
    truncate(workspace / "data/toy/source" / last["image"])
    result = invoke(workspace, "--set", "ptl.images_per_domain=12", "translate", "--domain", "1")
    error_line(result, f"data/toy/source/{last['image']}: cannot decode image (truncated or corrupt file)")
    domain = Workspace(workspace).domain_dir(1)
    journal = (domain / ".journal/rank-0.jsonl").read_text().splitlines()
    assert len(journal) == 8  # the first two batches of 4 (the broken image is in the third)
    for line in journal:
        with Image.open(domain / json.loads(line)["image"]) as image:
            image.load()


# -- params -----------------------------------------------------------------------------------------------------

PARAM_CASES = {
    "N=0": ("ptl.N=0", "params.yaml: ptl.N: must be >= 1, got 0"),
    "negative-lambda": ("sgg.lambda=-1", "params.yaml: sgg.lambda: must be >= 0.0, got -1.0"),
    "t_final<N": ("ptl.t_final=1", "params.yaml: ptl.N: 2 domains need t_final >= N"),
    "T<t_final": ("diffusion.num_train_timesteps=10", "ptl.t_final: 20 exceeds diffusion.num_train_timesteps"),
    "mistyped-key": ("sgg.lamda=3", "params.yaml: sgg.lamda: unknown key (did you mean sgg.lambda?)"),
    "unknown-section": ("colour.boost=1", "params.yaml: colour: unknown key"),
    "wrong-type": ("ptl.N=two", "params.yaml: ptl.N: expected int, got 'two'"),
    "out-of-range-fraction": ("segmenter.source_train.aug_fraction=1.5", "aug_fraction: must be <= 1.0"),
    "malformed-set": ("ptl.N", "--set 'ptl.N': expected KEY=VALUE"),
}


@pytest.mark.parametrize("case", PARAM_CASES)
def test_bad_param_is_one_line_naming_the_key(tmp_path, case):
    write_tiny_params(tmp_path)
    setting, fragment = PARAM_CASES[case]
    error_line(invoke(tmp_path, "--set", setting, "plan"), fragment)


def test_bad_params_file(tmp_path):
    error_line(invoke(tmp_path, "plan"), "params.yaml: params file not found")
    (tmp_path / "params.yaml").write_text("ptl: [\n")
    error_line(invoke(tmp_path, "plan"), "params.yaml: not valid YAML")
    (tmp_path / "params.yaml").write_text("ptl:\n  Nn: 3\n")
    error_line(invoke(tmp_path, "plan"), "params.yaml: ptl.Nn: unknown key (did you mean ptl.N?)")


@pytest.mark.parametrize("resolution, message", [
    ("[15, 32]", "data.resolution: [15, 32] must be divisible by 2 for a U-Net of 2 levels"),
    ("[30, 64]", "data.resolution: [30, 64] must be divisible by 4 for a U-Net of 3 levels"),
    ("[0, 0]", "data.resolution: each side must be >= 8 pixels"),
    ("[-32, 64]", "data.resolution: each side must be >= 8 pixels"),
])
@pytest.mark.parametrize("command", ["train-diffusion", "plan", "translate"])
def test_resolution_the_unet_cannot_take_is_a_params_error(workspace, resolution, message, command):
    levels = ["--set", "diffusion.unet.block_out_channels=[16, 32, 32]",
              "--set", "diffusion.unet.attention_levels=[false, false, false]"] if "3 levels" in message else []
    error_line(invoke(workspace, *levels, "--set", f"data.resolution={resolution}", command), message)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "'inf'"])
@pytest.mark.parametrize("key", ["sgg.lambda", "ptl.finetune.lr", "diffusion.beta_end"])
def test_non_finite_numbers_are_params_errors(workspace, key, value):
    error_line(invoke(workspace, "--set", f"{key}={value}", "plan"), f"{key}: must be a finite number")


@pytest.mark.parametrize("value, fragment", [
    ("[draft", "--set sgg.lambda: not valid YAML"),
    ("*x", "--set sgg.lambda: not valid YAML"),
    ("1\n---\n2", "two YAML documents"),
])
def test_set_values_that_are_not_yaml_are_one_line_errors(workspace, value, fragment):
    error_line(invoke(workspace, "--set", f"sgg.lambda={value}".replace("\\n", "\n"), "plan"), fragment)


def test_a_binary_params_file_is_one_line_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes(bytes(range(256)) * 4)
    error_line(invoke(tmp_path, "plan"), f"{params}: not a params file")
    params.write_bytes(b"run:\n  seed: 0\x00\n")
    error_line(invoke(tmp_path, "plan"), f"{params}: not a params file (binary content)")


def test_a_yaml_bomb_is_refused_before_it_expands(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\ndata:\n  license_note: *i\n")
    line = error_line(invoke(tmp_path, "plan"), "YAML aliases are not allowed")
    assert len(line) < 300
    (tmp_path / "params.yaml").write_text("data:\n  license: [" + ",".join(["x"] * 5000) + "]\n")
    line = error_line(invoke(tmp_path, "plan"), "data.license: expected str, got <list of 5000 items>")
    assert len(line) < 300


# -- checkpoints ------------------------------------------------------------------------------------------------


def test_a_ddpm_with_a_flipped_bit_is_refused_before_translating(workspace):
    model = Workspace(workspace).diffusion_model
    weights = model / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # an exponent bit of a late float32 weight
    weights.write_bytes(bytes(data))
    error_line(invoke(workspace, "translate", "--domain", "1"), "sha256 differs from the one recorded",
               "rerun `dasgen train-diffusion`")
    assert not Workspace(workspace).domain_dir(1).exists()
    (model / "dasgen_checksum.json").unlink()  # an unrecorded DDPM is not trusted either
    error_line(invoke(workspace, "translate", "--domain", "1"), "no dasgen_checksum.json")


def test_non_finite_translations_are_an_error_naming_the_domain_and_images(workspace):
    from dasgen.diffusion.unet import load_denoiser, save_denoiser

    model = Workspace(workspace).diffusion_model
    unet = load_denoiser(model)
    with torch.no_grad():
        unet.conv_out.bias.fill_(float("nan"))  # a damaged model that still carries a valid checksum
    save_denoiser(unet, model)
    line = error_line(invoke(workspace, "translate", "--domain", "1"), "domain 1: translation produced non-finite",
                      "nothing written for this batch")
    assert line.split("image(s) ")[1].split(" ")[0].rstrip(",") in {p.stem for p in
                                                                    (workspace / "data/toy/source/images").iterdir()}
    assert not list(Workspace(workspace).domain_dir(1).glob("*.png"))


def test_a_ddpm_config_diffusers_cannot_build_is_one_line(workspace, tmp_path):
    model = tmp_path / "ddpm"
    shutil.copytree(Workspace(workspace).diffusion_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"norm_num_groups": 0}))
    error_line(invoke(workspace, "--set", f"diffusion.pretrained={model}", "train-diffusion"),
               f"{model}: cannot load UNet2DModel")


def test_missing_checkpoints_name_the_command_that_writes_them(workspace):
    ws = Workspace(workspace)
    error_line(invoke(workspace, "translate", "--domain", "2"),
               f"{ws.segmenter_path(1, 2)}: checkpoint not found (run `dasgen translate --domain 1` first)")
    ws.segmenter_path(0).unlink()
    error_line(invoke(workspace, "translate", "--domain", "1"), "checkpoint not found (run `dasgen train-g0` first)")
    shutil.rmtree(ws.diffusion_model)
    error_line(invoke(workspace, "translate", "--domain", "1"),
               "diffusion_pytorch_model.safetensors: checkpoint not found (run `dasgen train-diffusion` first)")
    error_line(invoke(workspace, "evaluate", str(workspace / "g9.safetensors")), "g9.safetensors: checkpoint not found")


def test_segmenter_checkpoint_of_another_architecture_or_class_count(workspace):
    g0 = Workspace(workspace).segmenter_path(0)
    sidecar = json.loads(sidecar_path(g0).read_text())
    sidecar_path(g0).write_text(json.dumps({**sidecar, "arch": "fcn_resnet50"}))
    error_line(invoke(workspace, "translate", "--domain", "1"), f"{g0}: architecture 'fcn_resnet50', expected 'toy'")
    error_line(invoke(workspace, "evaluate", str(g0)), "architecture 'fcn_resnet50', expected 'toy'")

    save_segmenter(build_segmenter("toy", num_classes=16, width=8), g0, meta={"domain": 0})
    error_line(invoke(workspace, "translate", "--domain", "1"), f"{g0}: 16 classes, expected 19")

    save_segmenter(build_segmenter("toy", num_classes=19, width=16), g0, meta={"domain": 0})
    sidecar = json.loads(sidecar_path(g0).read_text())
    sidecar_path(g0).write_text(json.dumps({**sidecar, "width": 8}))  # sidecar of another model than the weights
    error_line(invoke(workspace, "translate", "--domain", "1"), f"{g0}: weights do not fit 'toy'", "shape mismatch")

    _flip_byte(g0)  # a weight changed after the sidecar was written
    error_line(invoke(workspace, "evaluate", str(g0)), f"{g0}: sha256 does not match its sidecar")
    g0.write_bytes(g0.read_bytes()[:100])
    error_line(invoke(workspace, "evaluate", str(g0)), f"{g0}: not a readable safetensors file")


# -- writing: non-empty output, disk full, permission denied ------------------------------------------------------


def test_export_into_a_non_empty_directory_needs_force_and_force_never_clears_foreign_data(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", 6, monkeypatch)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    error_line(invoke(root, "export", "--out", str(out)), f"output directory {out} is not empty; use force (--force)")
    error_line(invoke(root, "export", "--out", str(out), "--force"), f"refusing --force on {out}",
               "not a dasgen export")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    earlier = tmp_path / "earlier"
    assert invoke(root, "export", "--out", str(earlier)).exit_code == 0
    assert invoke(root, "export", "--out", str(earlier), "--force", "--min-consistency", "0.5").exit_code == 0
    assert (earlier / "manifest.json").is_file() and not (earlier / ".dasgen-export-incomplete").exists()


@pytest.mark.parametrize("out, why", [
    ("source", "is the source dataset (data.source.root)"),
    ("data/domains/002", "is the domain being exported"),
    ("data/domains/001", "lies inside the PTL domains (data/domains)"),
    ("data/domains", "contains the domain being exported"),
    ("data/g0", "is the source segmenter g_0 (data/g0)"),
    ("data", "contains the domain being exported"),
    (".", "contains the domain being exported"),
    ("source/images/export", "lies inside the source dataset"),
    ("metrics", "is the pipeline's metrics"),
])
def test_export_force_refuses_the_datasets_and_the_workspace_artifacts(tmp_path, monkeypatch, out, why):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    (root / "data" / "g0").mkdir(parents=True, exist_ok=True)
    (root / "data" / "g0" / "segmenter.safetensors").write_bytes(b"weights")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "g0.json").write_text("{}")
    before = tree_bytes(root)
    error_line(invoke(root, "export", "--out", str(root / out), "--force"), "refusing to export into", why)
    assert tree_bytes(root) == before  # nothing deleted, nothing added


def test_export_domain_zero_is_an_error_not_the_last_domain(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    error_line(invoke(root, "export", "--domain", "0", "--out", str(tmp_path / "x")), "--domain 0",
               "between 1 and ptl.N = 2")
    assert not (tmp_path / "x").exists()


def test_a_second_export_into_a_directory_being_written_fails_and_the_first_finishes(tmp_path, monkeypatch):
    """Two exports at once into one directory: the second meets the first's lock and stops with one line, touching
    nothing; the first completes and verifies."""
    import dasgen.export.parts as export_base

    root = export_workspace(tmp_path / "ws", 6, monkeypatch)
    out = tmp_path / "shared"
    second: list = []
    original = export_base.FileRecord.write_bytes

    def write_then_compete(self, relpath, data):
        original(self, relpath, data)
        if not second:  # while the first export holds the lock, mid-way, a second one starts
            second.append(invoke(root, "export", "--out", str(out), "--min-consistency", "0.0"))

    monkeypatch.setattr(export_base.FileRecord, "write_bytes", write_then_compete)
    first = invoke(root, "export", "--out", str(out))
    assert first.exit_code == 0, first.output
    error_line(second[0], str(out), "another dasgen export is writing into it")
    monkeypatch.undo()
    assert invoke(root, "verify", str(out)).exit_code == 0


def _failing(monkeypatch, name: str, error: int, when) -> list:
    """Make ``os.<name>`` raise OSError(``error``) for the calls ``when(path, calls_so_far)`` picks."""
    real, calls = getattr(os, name), []

    def fake(*args, **kwargs):
        path = os.fspath(args[1] if name == "replace" else args[0])
        if when(path, calls):
            raise OSError(error, os.strerror(error), path)
        calls.append(path)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fake)
    return calls


def test_disk_full_during_translate_keeps_finished_images(workspace, monkeypatch):
    domain = Workspace(workspace).domain_dir(1)
    pngs = []
    _failing(monkeypatch, "replace", errno.ENOSPC,
             lambda path, calls: path.endswith(".png") and (pngs.append(path) or len(pngs) > 3))
    result = invoke(workspace, "--set", "ptl.translate_batch_size=1", "translate", "--domain", "1")
    error_line(result, f"cannot write {domain / 'images'}", ": No space left on device")
    journal = [json.loads(line) for line in (domain / ".journal/rank-0.jsonl").read_text().splitlines()]
    assert len(journal) == 3
    kept = {entry["image"]: (domain / entry["image"]).read_bytes() for entry in journal}
    assert not [p for p in domain.rglob("*.tmp")]  # the failed write removed its temporary file
    monkeypatch.undo()

    result = invoke(workspace, "--set", "ptl.translate_batch_size=1", "translate", "--domain", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((domain / "metrics.json").read_text())["images_translated_this_run"] == 2
    assert all((domain / name).read_bytes() == data for name, data in kept.items())
    assert invoke(workspace, "verify", str(domain)).exit_code == 0


def test_permission_denied_writing_g_n_keeps_every_translated_image(workspace, monkeypatch):
    domain = Workspace(workspace).domain_dir(1)
    _failing(monkeypatch, "open", errno.EACCES,
             lambda path, calls: Path(path).name.startswith(".segmenter.safetensors"))
    error_line(invoke(workspace, "translate", "--domain", "1"),
               f"cannot write {domain / 'segmenter.safetensors'}: Permission denied")
    assert len((domain / ".journal/rank-0.jsonl").read_text().splitlines()) == 5
    monkeypatch.undo()
    result = invoke(workspace, "translate", "--domain", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((domain / "metrics.json").read_text())["images_translated_this_run"] == 0


def test_disk_full_saving_a_training_state_keeps_the_previous_one(workspace, monkeypatch):
    ws = Workspace(workspace)
    shutil.rmtree(ws.diffusion_state)  # the fixture's finished state would be restored: train from step 0
    _failing(monkeypatch, "replace", errno.ENOSPC,
             lambda path, calls: Path(path).name == "training_state-00000006.safetensors")
    error_line(invoke(workspace, "train-diffusion"),
               f"cannot write {ws.diffusion_state / 'training_state-00000006.safetensors'}: No space left on device")
    assert json.loads((ws.diffusion_state / "training_state.json").read_text())["step"] == 3
    monkeypatch.undo()
    assert invoke(workspace, "train-diffusion").exit_code == 0
    assert json.loads((ws.metrics / "diffusion.json").read_text())["resumed_from"] == 3


def test_disk_full_during_export_leaves_the_domain_intact_and_the_rerun_needs_no_force(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", 12, monkeypatch)
    domain = Workspace(root).domain_dir(2, 2)
    before = tree_bytes(domain)
    out = tmp_path / "out"
    _failing(monkeypatch, "replace", errno.ENOSPC, lambda path, calls: len(calls) >= 20)
    error_line(invoke(root, "export", "--out", str(out)), f"cannot write {out}", "No space left on device")
    monkeypatch.undo()
    assert tree_bytes(domain) == before
    assert not (out / "manifest.json").exists()
    result = invoke(root, "export", "--out", str(out))  # the same command finishes the job
    assert result.exit_code == 0, result.output
    assert invoke(root, "verify", str(out)).exit_code == 0


# -- integrity: dasgen verify (issue #8.4) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_domain_1(tiny_workspace, tmp_path_factory):
    """A translated domain 1 and its Cityscapes export, made once for the module."""
    root = tmp_path_factory.mktemp("verify") / "ws"
    shutil.copytree(tiny_workspace, root)
    assert invoke(root, "translate", "--domain", "1").exit_code == 0
    result = invoke(root, "export", "--domain", "1", "--out", str(root / "export"))
    assert result.exit_code == 0, result.output
    return root


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("artifact", ["domain", "export"])
@pytest.mark.parametrize("damage", ["flipped-byte", "missing-file", "extra-file"])
def test_verify_detects_damage(exported_domain_1, tmp_path, artifact, damage):
    source = exported_domain_1 / ("data/domains/001" if artifact == "domain" else "export")
    target = tmp_path / artifact
    shutil.copytree(source, target)
    assert invoke(exported_domain_1, "verify", str(target)).exit_code == 0
    folder = target / ("images" if artifact == "domain" else "leftImg8bit/train/gta5")
    victim = sorted(folder.glob("*.png"))[1]
    relpath = victim.relative_to(target).as_posix()
    if damage == "flipped-byte":
        _flip_byte(victim)
        kind = "altered"
    elif damage == "missing-file":
        victim.unlink()
        kind = "missing"
    else:
        victim = victim.with_name("zz_extra.png")
        shutil.copyfile(sorted(folder.glob("*.png"))[0], victim)
        relpath, kind = victim.relative_to(target).as_posix(), "extra"
    result = invoke(exported_domain_1, "verify", str(target))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{kind} (1): {relpath}" in result.stdout
    assert f"verify failed: {target}: " in result.stderr and f"1 {kind}" in result.stderr


# -- source roots: one place, one spelling -------------------------------------------------------------------------


def test_a_source_root_spelt_with_a_trailing_slash_keeps_the_finished_domain(workspace):
    assert invoke(workspace, "translate", "--domain", "1").exit_code == 0
    domain = Workspace(workspace).domain_dir(1)
    before = {p.name: p.stat().st_mtime_ns for p in domain.rglob("*") if p.is_file()}
    for spelling in ("data/toy/source/", "./data/toy/source", str(workspace / "data/toy/source")):
        result = invoke(workspace, "--set", f"data.source.root={spelling}", "translate", "--domain", "1")
        assert result.exit_code == 0, result.output
        assert "already complete" in result.stderr and "afresh" not in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in domain.rglob("*") if p.is_file()} == before


def test_translate_refuses_a_scan_of_another_source_root(workspace):
    other = workspace / "other-source"
    shutil.copytree(workspace / "data/toy/source", other)
    for name in sorted((other / "images").iterdir())[4:]:  # a different dataset: fewer images
        name.unlink()
        (other / "labels" / name.name).unlink()
    error_line(invoke(workspace, "--set", "data.source.root=other-source", "translate", "--domain", "1"),
               "source_pairs.json: scanned from source root 'data/toy/source'", "data.source.root = 'other-source'",
               "run `dasgen scan`")
    assert not Workspace(workspace).domain_dir(1).exists()
    assert invoke(workspace, "--set", "data.source.root=other-source", "scan").exit_code == 0
    assert invoke(workspace, "--set", "data.source.root=other-source", "translate", "--domain", "1").exit_code == 0


def test_ids_that_cannot_name_a_file_are_reported_at_scan(tmp_path):
    root = gta5_workspace(tmp_path)
    image, label = _pair()
    for stem in (".hidden", "x" * 201):
        write_rgb(root / "src" / "images" / f"{stem}.png", image)
        write_label(root / "src" / "labels" / f"{stem}.png", label, mode="P")
    raw = os.path.join(os.fsencode(root / "src" / "images"), b"caf\xe9.png")  # a Latin-1 name: not UTF-8
    with open(raw, "wb") as handle:
        handle.write((root / "src" / "images" / ".hidden.png").read_bytes())
    result = invoke(root, "scan")
    assert result.exit_code == 0, result.output
    assert "skipped .hidden (images/.hidden.png): unusable id: id starts with '.'" in result.stderr
    assert "id longer than 200 characters" in result.stderr
    assert "file name is not valid UTF-8" in result.stderr and "caf\\xe9" in result.stderr
    record = json.loads(Workspace(root).source_pairs.read_text())
    assert [e["id"] for e in record["entries"]] == GOOD_IDS and len(record["skipped"]) == 3


def test_force_on_a_directory_that_cannot_be_emptied_is_one_line(tmp_path, monkeypatch):
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    out = tmp_path / "earlier"
    assert invoke(root, "export", "--out", str(out)).exit_code == 0
    before = tree_bytes(out)

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(shutil, "rmtree", read_only)  # as on a read-only mount (root ignores chmod here)
    monkeypatch.setattr(Path, "unlink", read_only)
    error_line(invoke(root, "export", "--out", str(out), "--force"), f"cannot empty output directory {out}",
               "Permission denied")
    monkeypatch.undo()
    assert tree_bytes(out) == before


@pytest.mark.parametrize("left", ["index-only", "no-checksums", "altered-index"])
def test_export_refuses_a_domain_that_is_not_finished(tmp_path, monkeypatch, left):
    """A domain killed after ``index.parquet`` and before ``provenance.json`` (or before ``checksums.json``, which
    finalize writes last) is not exported; nor is one whose index no longer matches what finalize recorded."""
    root = export_workspace(tmp_path / "ws", 4, monkeypatch)
    domain = Workspace(root).domain_dir(2, 2)
    if left == "index-only":
        for name in ("provenance.json", "metrics.json", "checksums.json"):
            (domain / name).unlink()
    elif left == "no-checksums":
        (domain / "checksums.json").unlink()
    else:
        (domain / "index.parquet").write_bytes((domain / "index.parquet").read_bytes() + b"\0")
    out = tmp_path / "out"
    fragment = "was altered after it was finished" if left == "altered-index" else "is not finished"
    error_line(invoke(root, "export", "--out", str(out)), str(domain), fragment)
    assert not out.exists()


@pytest.mark.parametrize("fmt, final", [("parquet", "train-00000-of-00001.parquet"), ("hdf5", "dataset.h5")])
def test_disk_full_closing_a_parquet_or_hdf5_export_is_one_line(tmp_path, monkeypatch, fmt, final):
    """The last write of a shard or of dataset.h5 happens when it is closed: a failure there is one line too, no
    temporary file stays, and the same command then finishes the export."""
    root = export_workspace(tmp_path / "ws", 6, monkeypatch)
    out = tmp_path / "out"
    _failing(monkeypatch, "replace", errno.ENOSPC, lambda path, calls: Path(path).name == final)
    error_line(invoke(root, "export", "--format", fmt, "--out", str(out)), f"cannot write {out}",
               "No space left on device")
    monkeypatch.undo()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")] and not (out / "manifest.json").exists()
    result = invoke(root, "export", "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert invoke(root, "verify", str(out)).exit_code == 0


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_writes_failing_inside_the_parquet_and_hdf5_libraries_are_one_line(tmp_path, monkeypatch, fmt):
    """The OS refusing the libraries' own writes (here a file-size limit, EFBIG, as a full disk refuses them with
    ENOSPC) gives one line and exit 1 -- no traceback, no crash of the HDF5 library -- and leaves no temporary file."""
    import resource
    import signal
    import subprocess
    import sys

    root = export_workspace(tmp_path / "ws", 16, monkeypatch)  # a shard of 8 rows and dataset.h5 exceed 12 kB
    out = tmp_path / "out"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    process = subprocess.run(
        [sys.executable, "-m", "dasgen", "--params", str(root / "params.yaml"), "--workspace", str(root),
         "export", "--format", fmt, "--out", str(out)],
        capture_output=True, text=True, preexec_fn=limit_file_size, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    assert process.returncode == 1, (process.returncode, process.stderr[-2000:])
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {out}" in errors[0] and "File too large" in errors[0], errors
    assert ("dataset.h5" if fmt == "hdf5" else ".parquet") in errors[0]  # the library's own write failed
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    result = invoke(root, "export", "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert invoke(root, "verify", str(out)).exit_code == 0


def test_a_force_replacement_that_fails_part_way_can_be_redone(tmp_path, monkeypatch):
    """``--force`` over an earlier export that stops part-way (a read-only subdirectory: its images cannot be
    deleted) leaves a directory that is still that earlier export: its manifest goes last. Once the cause is fixed,
    ``--force`` replaces it; a plain run still asks for ``--force``."""
    root = export_workspace(tmp_path / "ws", 6, monkeypatch)
    out = tmp_path / "earlier"
    assert invoke(root, "export", "--out", str(out)).exit_code == 0
    real_unlink = os.unlink

    def read_only_images(path, *args, **kwargs):
        if os.fspath(path).endswith("_leftImg8bit.png"):  # as in a read-only leftImg8bit/ (root ignores chmod here)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", read_only_images)
    error_line(invoke(root, "export", "--out", str(out), "--force", "--min-consistency", "0.5"),
               f"cannot empty output directory {out}", "Permission denied")
    monkeypatch.undo()
    assert (out / "manifest.json").is_file() and not (out / ".dasgen-export-incomplete").exists()
    error_line(invoke(root, "export", "--out", str(out)), "is not empty; use force (--force)")
    result = invoke(root, "export", "--out", str(out), "--force", "--min-consistency", "0.5")
    assert result.exit_code == 0, result.output
    assert invoke(root, "verify", str(out)).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["min_consistency"] == 0.5
