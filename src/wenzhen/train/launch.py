"""One training worker per GPU of the host, started by `wenzhen train` itself when no launcher was typed.

transformers' Trainer, started as one process on a host with several GPUs, wraps the model in DataParallel, which
splits packed rows across GPUs (a loss/label size mismatch) and cannot run compiled layers. So a plain
`wenzhen train ...` on such a host re-runs itself as one process per GPU through torch's own elastic launcher
(what `torchrun --standalone` runs), as other fine-tuning command lines do; each worker then trains under DDP. A run
that torchrun or accelerate already started is left as it is.
"""

import logging
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wenzhen.errors import WenzhenError

log = logging.getLogger(__name__)

# Set by torchrun / torch elastic (LOCAL_RANK, WORLD_SIZE, TORCHELASTIC_RUN_ID) or by `accelerate launch`, even for
# a single process (ACCELERATE_MIXED_PRECISION).
LAUNCHER_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")


@dataclass(frozen=True)
class LaunchDecision:
    """How many workers to start (0: train in this process) and which GPUs they see."""

    workers: int
    visible_devices: str | None
    reason: str


def decide_launch(
    gpus: str | None, cpu: bool, environ: Mapping[str, str], visible_gpus: int
) -> LaunchDecision:
    """Train in this process, or start one worker per selected GPU.

    `gpus` is `--gpus`: a count (`2`: the first two visible GPUs) or indices among the visible ones (`0,2`);
    None: every visible GPU (CUDA_VISIBLE_DEVICES already restricts what is visible).
    """
    if any(name in environ for name in LAUNCHER_VARIABLES):
        return LaunchDecision(0, None, "started by torchrun/accelerate")
    if cpu or visible_gpus == 0:
        if gpus is not None:
            raise WenzhenError("--gpus needs GPUs; leave it out to train on the CPU")
        return LaunchDecision(0, None, "no GPU in use")
    indices = select_gpus(gpus, visible_gpus)
    if visible_gpus == 1:
        return LaunchDecision(0, None, "one GPU")
    # Even one selected GPU of several runs as a worker that sees only it: a process seeing several GPUs would get
    # the Trainer's DataParallel.
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    names = (
        [part.strip() for part in visible.split(",")] if visible else [str(i) for i in range(visible_gpus)]
    )
    chosen = ",".join(names[index] for index in indices)
    return LaunchDecision(len(indices), chosen, f"{len(indices)} GPU(s): {chosen}")


def select_gpus(gpus: str | None, visible_gpus: int) -> list[int]:
    """Indices (among the visible GPUs) that `--gpus` selects."""
    if gpus is None:
        return list(range(visible_gpus))
    text = gpus.strip()
    try:
        if "," not in text:
            count = int(text)
            if not 1 <= count <= visible_gpus:
                raise ValueError
            return list(range(count))
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise WenzhenError(
            f"--gpus {gpus!r}: give a count from 1 to {visible_gpus} or indices such as 0,1 "
            f"({visible_gpus} GPU(s) visible)"
        ) from None
    if not indices or len(set(indices)) != len(indices) or not all(0 <= i < visible_gpus for i in indices):
        raise WenzhenError(f"--gpus {gpus!r}: indices must be distinct, from 0 to {visible_gpus - 1}")
    return indices


def launch_workers(workers: int, argv: Sequence[str], visible_devices: str | None = None) -> None:
    """Run `python -m wenzhen ARGV` as `workers` local processes through torch's elastic launcher (torchrun
    --standalone: a free rendezvous port, no restarts); returns when all have finished, raises if one failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=workers,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=1,
        start_method="spawn",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "wenzhen", *argv)
    except ChildFailedError as exc:
        failures = "; ".join(
            f"rank {rank}: exit {failure.exitcode}" for rank, failure in exc.failures.items()
        )
        raise WenzhenError(
            f"a training worker failed ({failures}); its error is printed above. Rerun with --gpus 1 to train on "
            "one GPU"
        ) from None
