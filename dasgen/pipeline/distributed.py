"""torchrun support: rank / world size from the environment, process-group set-up and barriers.

``torchrun --nproc_per_node K -m dasgen translate --domain n`` starts K processes; each translates every K-th
pending batch (batch ``b`` on rank ``b % K`` in a fresh run) and writes its own journal; rank 0 merges them (sorted by
id), so the translated images and ``index.parquet`` are byte-identical for any K (and any resume history, even with
another K). The Eq. 12 fine-tune of g_n then runs data-parallel
(:class:`ShardedSegmenter`, DistributedDataParallel): every rank draws the same batch, runs its share of the rows and
the gradients are summed, so g_n equals the one-process g_n up to float rounding (not bit for bit: convolutions
over fewer rows and the all-reduce add in another order). Without torchrun (WORLD_SIZE unset) everything runs in one
process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


# How long a rank may wait in a collective: the other ranks wait while rank 0 finalises a domain (merging 24,966
# images into Parquet shards for the last one) and scores g_n -- longer than NCCL's 10-minute default.
BARRIER_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed() -> DistContext:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        _TRAINING_GROUPS.clear()
        dist.destroy_process_group()


_TRAINING_GROUPS: dict[int, object] = {}  # members -> process group of ranks 0..members-1 (see data_parallel_segmenter)


class ShardedSegmenter(torch.nn.Module):
    """Data-parallel g for the Eq. 12 fine-tune that keeps the one-process maths.

    Every rank draws the *same* whole batch (same generator, so sampling, flips and the Supp. C augmentation match a
    one-process run draw for draw) and calls this module on it. ``forward`` runs the DDP-wrapped model on this rank's
    contiguous share of the rows only, all-reduces the logits so every rank holds the whole batch's logits (each row
    comes from exactly one rank; the others add zeros), and returns them with this rank's rows live and the others'
    detached. The unchanged training loop then computes the whole batch's loss on every rank -- the same value
    everywhere, so logging and the non-finite check agree -- and backpropagates through its own rows. The whole
    batch's gradient is the *sum* of the ranks' gradients; DDP averages, so the gradient entering the own rows is
    scaled by the number of ranks (a hook rather than a summing comm hook: when Eq. 12's two terms are backpropagated
    one after the other, DDP all-reduces the accumulated ``.grad``, and only averaging leaves the already-reduced
    first term unchanged). BatchNorm: on CUDA the model is converted to SyncBatchNorm, so batch
    statistics cover the whole batch; on CPU (gloo) SyncBatchNorm is unavailable and a BatchNorm model would see
    per-rank statistics (the toy segmenter uses GroupNorm, which is per image and unaffected).
    """

    def __init__(self, model: torch.nn.Module, *, rank: int, members: int, group=None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        if device is not None and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
            self.ddp = DistributedDataParallel(model, device_ids=[device.index], process_group=group)
        else:
            self.ddp = DistributedDataParallel(model, process_group=group)
        self.rank, self.members, self.group = rank, members, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < self.members:
            raise ValueError(f"a batch of {x.shape[0]} cannot be split over {self.members} ranks")
        rows = torch.arange(x.shape[0], device=x.device).tensor_split(self.members)[self.rank]  # (b_r,) own rows
        live = self.ddp(x[rows])  # (b_r, C, H, W)
        if live.requires_grad:
            members = self.members
            live.register_hook(lambda grad: grad * members)  # DDP's average of the K shares -> their sum
        gathered = live.new_zeros((x.shape[0], *live.shape[1:]))  # (B, C, H, W)
        gathered[rows] = live.detach()
        dist.all_reduce(gathered, group=self.group)  # a gather: every row is non-zero on one rank only
        return gathered.index_copy(0, rows, live)  # (B, C, H, W): own rows carry the gradient


def data_parallel_segmenter(model: torch.nn.Module, ctx: DistContext, *, batch_size: int,
                            device: torch.device) -> torch.nn.Module | None:
    """The module to fine-tune on this rank: ``model`` itself with one process, else a :class:`ShardedSegmenter`.

    A batch of ``batch_size`` rows is split over ``min(K, batch_size)`` ranks (the paper's batch of 2 keeps two
    busy); ranks beyond that get None and sit the fine-tune out. Every rank must call this (it creates the process
    group of the training ranks collectively).
    """
    if ctx.world_size == 1:
        return model
    members = min(ctx.world_size, batch_size)
    group = None
    if members < ctx.world_size:  # created once per size and reused: a 600-domain run would pile up groups
        if members not in _TRAINING_GROUPS:
            _TRAINING_GROUPS[members] = dist.new_group(list(range(members)))
        group = _TRAINING_GROUPS[members]
    if ctx.rank >= members:
        return None
    if members == 1:
        return model
    return ShardedSegmenter(model, rank=ctx.rank, members=members, group=group, device=device)
