"""Scale-out with torchrun (gloo on CPU): K = 2 processes give the K = 1 artifact, also when resuming a K = 1 run.

What is byte-identical for any K: every translated image and ``index.parquet`` (each image's computation depends on
its own seed and its fixed batch only; rank 0 merges the journals sorted by id). What is equal to float tolerance:
the fine-tuned g_n (data-parallel over the ranks with the same batches; convolutions over fewer rows and the
gradient all-reduce round differently), and so its sidecar's sha256, ``provenance.json`` and ``metrics.json``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

# The end-to-end test imports the stages inside the test: mp.spawn's workers import this module, and they only need
# dasgen.pipeline.distributed (importing the diffusion stack would cost each worker seconds).


def identical_files(directory):
    """The files that must be byte-identical for any K: the translated images and the index."""
    files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted((directory / "images").iterdir())}
    files["index.parquet"] = (directory / "index.parquet").read_bytes()
    return files


def assert_same_domain(ours, reference, *, weights_atol):
    assert identical_files(ours) == identical_files(reference)
    mine, theirs = load_file(ours / "segmenter.safetensors"), load_file(reference / "segmenter.safetensors")
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=weights_atol, msg=key)


def torchrun(root, *args):
    """``torchrun --standalone --nproc_per_node 2 -m dasgen ...`` (standalone: a free rendezvous port is picked)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dasgen",
           "--params", str(root / "params.yaml"), "--workspace", str(root), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_give_the_one_rank_artifact(workspace, tmp_path, monkeypatch):
    from dasgen.config import load_config
    from dasgen.stages.translate import run_domain
    from dasgen.pipeline.workspace import Workspace
    from dasgen.artifact.writer import DomainWriter

    reference = tmp_path / "reference"
    shutil.copytree(workspace, reference)
    config = load_config(workspace / "params.yaml")
    ws, ref_ws = Workspace(workspace), Workspace(reference)
    run_domain(config, ref_ws, 1, progress=False)  # K = 1, in this process

    # Start domain 1 with one process and kill it after 3 images (inside the first batch of 4) ...
    original_add, added = DomainWriter.add, []

    def add_then_interrupt(self, record, image):
        if len(added) == 3:
            raise KeyboardInterrupt
        added.append(record.id)
        return original_add(self, record, image)

    monkeypatch.setattr(DomainWriter, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_domain(config, ws, 1, progress=False)
    monkeypatch.setattr(DomainWriter, "add", original_add)
    # ... then resume it with K = 2 (the pending batches are dealt over both ranks) and go on to the final domain.
    result = torchrun(workspace, "translate", "--domains", "1-2")
    assert result.returncode == 0, result.stderr[-4000:]

    g0 = load_file(ws.segmenter_path(0))
    g1 = load_file(ws.segmenter_path(1, config.ptl.N))
    moved = max((g1[k].float() - g0[k].float()).abs().max().item() for k in g0 if g0[k].is_floating_point())
    assert moved > 1e-4  # the fine-tune really ran, so the tolerance below is meaningful
    assert_same_domain(ws.domain_dir(1, config.ptl.N), ref_ws.domain_dir(1, config.ptl.N), weights_atol=1e-5)

    # The final domain from the same g_1: translate it with one process on top of the K = 2 domain 1.
    shutil.rmtree(ref_ws.domain_dir(1, config.ptl.N))
    shutil.copytree(ws.domain_dir(1, config.ptl.N), ref_ws.domain_dir(1, config.ptl.N))
    run_domain(config, ref_ws, 2, progress=False)
    assert len(list((ws.domain_dir(2, config.ptl.N) / "images").iterdir())) == config.toy.n_source
    assert_same_domain(ws.domain_dir(2, config.ptl.N), ref_ws.domain_dir(2, config.ptl.N), weights_atol=1e-5)


# -- the data-parallel fine-tune module on its own: 2 gloo processes, an uneven split ------------------------------


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now, for the gloo rendezvous of spawned ranks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)  # test-local weights, identical in every process
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.GroupNorm(2, 6), torch.nn.ReLU(),
                               torch.nn.Conv2d(6, 4, 1))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((3, 3, 6, 8), generator=g)  # 3 rows over 2 ranks: shares of 2 and 1
    y = torch.randint(0, 4, (3, 6, 8), generator=g)
    y[0, :3] = 255  # ignore pixels change the normalisation, so a per-rank mean would be wrong
    return x, y


def _loss(logits, y):
    return F.cross_entropy(logits, y, ignore_index=255, reduction="sum") / (y != 255).sum()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from dasgen.pipeline.distributed import DistContext, data_parallel_segmenter

        model = _net()
        sharded = data_parallel_segmenter(model, DistContext(rank=rank, world_size=world), batch_size=3,
                                          device=torch.device("cpu"))
        losses = []
        for seed in (1, 2):  # two backward passes into the same .grad, as Eq. 12's L_ada then L_src
            x, y = _batch(seed)
            loss = _loss(sharded(x), y)
            loss.backward()
            losses.append(loss.detach())
        # a batch smaller than the world: rank 0 trains alone (no DDP), rank 1 sits out
        small = data_parallel_segmenter(_net(), DistContext(rank=rank, world_size=world), batch_size=1,
                                        device=torch.device("cpu"))
        role = "sits out" if small is None else ("alone" if isinstance(small, torch.nn.Sequential) else "sharded")
        torch.save({"losses": losses, "grads": [p.grad for p in model.parameters()], "role": role},
                   out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_segmenter_gives_the_whole_batch_loss_and_gradient(tmp_path):
    port = free_port()
    mp.spawn(_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    model = _net()
    losses = []
    for seed in (1, 2):
        x, y = _batch(seed)
        loss = _loss(model(x), y)
        loss.backward()
        losses.append(loss.detach())
    for rank, role in enumerate(("alone", "sits out")):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["role"] == role
        torch.testing.assert_close(got["losses"], losses, rtol=1e-6, atol=1e-7)
        for mine, full in zip(got["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(mine, full, rtol=1e-5, atol=1e-7)


def _frozen_batchnorm_worker(rank, world, port, out):
    """The stage's order for segmenter.batchnorm: frozen -- freeze, then wrap for data parallelism, then fine-tune."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from dasgen.pipeline.distributed import DistContext, data_parallel_segmenter
        from dasgen.segment.train import finetune, freeze_batchnorm

        torch.manual_seed(0)  # test-local weights, identical in every process
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                    torch.nn.Conv2d(6, 4, 1))
        before = {k: v.clone() for k, v in model[1].state_dict().items()}
        freeze_batchnorm(model)
        sharded = data_parallel_segmenter(model, DistContext(rank=rank, world_size=world), batch_size=2,
                                          device=torch.device("cpu"))
        sample = lambda generator: _batch(int(torch.randint(100, (1,), generator=generator)))  # noqa: E731
        finetune(sharded, lambda g: tuple(t[:2] for t in sample(g)), lambda g: tuple(t[:2] for t in sample(g)),
                 iters=3, lr=1e-2, optimizer="sgd", generator=torch.Generator().manual_seed(0), progress=False,
                 batchnorm="frozen")
        kept = all(torch.equal(before[k], v) for k, v in model[1].state_dict().items())
        torch.save({"kept": kept, "conv": model[0].weight.detach().clone()}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_frozen_batchnorm_fine_tunes_data_parallel(tmp_path):
    """Two ranks fine-tune a BatchNorm net with frozen BatchNorm: DDP must not wait for gradients of the frozen
    affine parameters (it would fail at the second iteration), the statistics stay, the ranks agree."""
    port = free_port()
    mp.spawn(_frozen_batchnorm_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["kept"] for r in ranks)
    torch.testing.assert_close(ranks[0]["conv"], ranks[1]["conv"])
