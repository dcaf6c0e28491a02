"""Data-parallel training on torch.distributed: the process group, each rank's shard, the gradient all-reduce.

Every rank holds the whole graph and model (full-graph LightGCN propagates every node at every step), trains on its
own shard of each global batch of BPR triples, and averages the gradients with one all-reduce per step, so every
rank takes the same optimizer step and the replicas stay identical. Rank 0 alone validates, tests and writes; the
decisions that follow from validation (stop, learning rate, time budget) are broadcast so every rank acts on the
same one. The processes are started by ``torchrun`` (or ``gnaq train --nproc N``, which runs it), which sets the
rendezvous environment read here. docs/method.md says why an explicit all-reduce rather than
``DistributedDataParallel``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
_RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_HOW = "start the ranks with `gnaq train --nproc N ...` or `torchrun --nproc-per-node N -m cli train ...`"
T = TypeVar("T")


class DistributedError(RuntimeError):
    """A set-up or peer failure of distributed training, said in terms of what to do about it."""


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training ranks; ``Cluster()`` is the single-process run (every op a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: T) -> T:
        """This rank's share of a global batch: every ``world_size``-th row from row ``rank``."""
        return batch[self.rank::self.world_size] if self.distributed else batch

    def average_gradients(self, module: nn.Module) -> None:
        """Replace each gradient by its mean over the ranks: one all-reduce of all of them, flattened.

        Every rank ran the same graph, so the same parameters have a gradient on each (``None`` ones, e.g. a frozen
        grid's, are skipped alike).
        """
        if not self.distributed:
            return
        grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._collective("the gradient all-reduce", lambda: dist.all_reduce(flat))
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and dense buffers on every rank (the starting point of a stage)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.layout == torch.strided:  # sparse buffers (the graph) are built alike on every rank
                    self._collective("broadcasting the model", lambda t=tensor: dist.broadcast(t, src=0))

    def decide(self, *values: float) -> tuple[float, ...]:
        """Rank 0's ``values`` on every rank: the decisions that validation and the clock make on rank 0 only."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._tensor_device())
        self._collective("waiting for rank 0's decision", lambda: dist.broadcast(tensor, src=0))
        return tuple(tensor.tolist())

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (e.g. an epoch's loss)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._tensor_device())
        self._collective("averaging the loss", lambda: dist.all_reduce(tensor))
        return tensor.item() / self.world_size

    def check_same(self, what: str, value: Any) -> None:
        """Refuse to train when the ranks disagree on ``value`` (their data or settings): one line naming them."""
        if not self.distributed:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
        digests: list[str | None] = [None] * self.world_size
        self._collective(f"comparing the {what}", lambda: dist.all_gather_object(digests, digest))
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise DistributedError(f"ranks {', '.join(map(str, differ))} have other {what} than rank 0 "
                                   f"({', '.join(f'rank {r}: {d}' for r, d in enumerate(digests))}): start every "
                                   f"rank with the same command, settings and data")

    def barrier(self, why: str) -> None:
        if self.distributed:
            self._collective(why, dist.barrier)

    def _tensor_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _collective(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except RuntimeError as error:
            raise DistributedError(f"rank {self.rank} of {self.world_size}: lost the other ranks during {what}: "
                                   f"another rank failed or was stopped (its own error says why); no version is "
                                   f"written ({type(error).__name__}: {str(error).splitlines()[0]})") from error


def cluster_device(cluster: Cluster, configured: str) -> torch.device:
    """The torch device of this rank: a bare ``cuda`` becomes ``cuda:<local rank>`` when several ranks run."""
    device = torch.device(configured)
    if device.type == "cuda" and device.index is None and cluster.distributed:
        return torch.device("cuda", cluster.local_rank)
    return device


def _environment_int(name: str, environ: dict[str, str]) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise DistributedError(f"{name}={environ[name]!r} is not an integer; {_HOW}") from None


def cluster_from_environment(device: str, *, expected_world_size: int | None = None,
                             environ: dict[str, str] | None = None) -> Cluster:
    """Where this process stands, from the variables ``torchrun`` sets; ``Cluster()`` when none are set.

    ``expected_world_size`` (``--nproc``) must match the ``WORLD_SIZE`` the ranks were started with.
    """
    env = dict(os.environ) if environ is None else environ
    if "WORLD_SIZE" not in env:
        if expected_world_size not in (None, 1):
            raise DistributedError(f"--nproc {expected_world_size} asks for {expected_world_size} ranks but this "
                                   f"process was not started by torchrun (no WORLD_SIZE); {_HOW}")
        return Cluster()
    world_size = _environment_int("WORLD_SIZE", env)
    if expected_world_size is not None and expected_world_size != world_size:
        raise DistributedError(f"mismatched world size: --nproc {expected_world_size} but torchrun started "
                               f"WORLD_SIZE={world_size} ranks; pass the same number to both, or leave out --nproc")
    if world_size < 1:
        raise DistributedError(f"WORLD_SIZE={world_size}: at least one rank is needed")
    if world_size == 1:
        return Cluster()
    missing = [name for name in _RENDEZVOUS_ENV if name not in env]
    if missing:
        raise DistributedError(f"missing rendezvous: WORLD_SIZE={world_size} but {', '.join(missing)} "
                               f"{'is' if len(missing) == 1 else 'are'} not set (torchrun sets them); {_HOW}")
    rank, local_rank = _environment_int("RANK", env), _environment_int("LOCAL_RANK", env)
    if not 0 <= rank < world_size:
        raise DistributedError(f"mismatched world size: RANK={rank} is outside 0..{world_size - 1} "
                               f"(WORLD_SIZE={world_size})")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError(f"--device {device} but CUDA is not available on rank {rank}")
    return Cluster(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


@contextmanager
def process_group(cluster: Cluster, timeout_seconds: float) -> Iterator[Cluster]:
    """Join the other ranks (rendezvous at ``MASTER_ADDR:MASTER_PORT``) for the block; leave the group after.

    ``timeout_seconds`` bounds the rendezvous and every collective: a rank waits that long for its peers (e.g.
    while rank 0 validates or writes the artifact) before it gives up with an error.
    """
    if not cluster.distributed:
        yield cluster
        return
    if cluster.backend == "nccl":
        torch.cuda.set_device(cluster.local_rank)
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group(cluster.backend, rank=cluster.rank, world_size=cluster.world_size,
                                timeout=timedelta(seconds=timeout_seconds))
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"missing rendezvous: rank {cluster.rank} of {cluster.world_size} did not meet the "
                               f"other ranks at {where} within {timeout_seconds:g} s (is every rank started, and "
                               f"is that address reachable?): {str(error).splitlines()[0]}") from error
    log.info("rank %d of %d joined the %s process group at %s", cluster.rank, cluster.world_size, cluster.backend,
             where)
    try:
        yield cluster
    finally:
        dist.destroy_process_group()
