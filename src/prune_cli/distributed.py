"""Several processes, one run: `torchrun --nproc-per-node N prune-run ...`, `accelerate launch
--multi_gpu --num_processes N -m prune_cli.cli ...`, or a SLURM step with N tasks
(`hydra.launcher.tasks_per_node=N`, or `srun -n N prune-run ...`).

accelerate does the data-parallel training (sharded batches, gradients averaged by DDP). What a
pipeline needs on top of it lives here: every process must reach the SAME decisions -- the run
folder, the heads a scorer keeps, a cache hit or miss, a stop on a preemption signal -- or the
processes diverge (different shapes after surgery, a collective that only some ranks enter).
The rule throughout: rank 0 decides and broadcasts; rank 0 alone writes the run folder, the
cache and W&B, and the others wait for it where they will read what it wrote.

With one process every function here is the identity / a no-op, and torch.distributed is never
touched.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def adopt_slurm_tasks() -> None:
    """A SLURM step with several tasks sets SLURM_* variables, not torch's: export torch's
    (rank 0's node as master, a port drawn from the job id) the way submitit does. Only inside a
    step (srun, submitit): a batch script alone has SLURM_NTASKS but one process."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as err:  # the slurm extra brings it; without it we cannot name the master node
        raise RuntimeError("a SLURM step with several tasks needs submitit: pip install 'prune-cli[slurm]'") from err
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


#: how long a process waits for the others at a collective: rank 0 may be waiting for a cache
#: lock another job holds while it fine-tunes that key (torch's default, 10-30 min, is shorter)
TIMEOUT = timedelta(hours=2)


def init() -> None:
    """Join the process group (accelerate adopts it later). On GPUs: NCCL for tensors on the
    device, gloo for the small Python objects broadcast here."""
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=TIMEOUT)


def active() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def broadcast(obj):
    """Rank 0's `obj` on every process (any picklable value: tensors go to the CPU first)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [_cpu(obj) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every process's `obj`, in rank order, on every process."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, _cpu(obj))
    return out


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_writes():
    """`with main_writes() as write: if write: ...` -- rank 0 writes, everyone leaves together."""
    try:
        yield is_main()
    finally:
        barrier()


def _cpu(obj):
    from accelerate.utils import send_to_device

    return send_to_device(obj, "cpu")
