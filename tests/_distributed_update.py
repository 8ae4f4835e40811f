"""Helper of tests/test_distributed.py: one DiscriminatorUpdater step per scenario, each process on its own share of
the pairs (uneven on purpose: other prompts, other sample counts, or none at all). Each process saves what the step
did (parameters after it, statistics) to OUT_DIR/SCENARIO-rankN.pt; the test compares them with one process
stepping on the union of the shares (:func:`run_update` without an accelerator).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_distributed_update.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch

TIMEOUT_S = 45  # process-group timeout: a collective that one process never joins fails instead of hanging
BATCH_SIZE = 2  # sequences per chunk: the shares below run different numbers of chunks

# Per scenario: how the student scores reach the update (None: re-scored; "reuse": detached reward scores;
# "fused": reward scores that keep their graph), and per process a share: (prompt id, samples of it) pairs.
SCENARIOS: dict[str, tuple[str | None, list[list[tuple[int, int]]]]] = {
    "uneven": (None, [[(0, 2)], [(1, 3), (2, 3), (3, 3)]]),  # 1 + 1 chunks against 2 + 5
    "idle": ("reuse", [[], [(0, 2), (1, 1)]]),  # one process without a single pair
    "fused": ("fused", [[(0, 1), (1, 4)], [(2, 2)]]),
}
# Also with the discriminator sharded over the processes (FSDP2): unclipped (a wrongly scaled gradient shows),
# clipped (the gradient norm is then a collective over the shards), and with activation checkpointing (enabled before
# sharding: the recomputation runs on the weights FSDP gathers again for the backward pass). Name: (scenario,
# max_grad_norm, checkpointing).
SHARDED = {
    "sharded": ("uneven", None, False),
    "sharded-clipped": ("uneven", 0.2, False),
    "sharded-checkpointed": ("uneven", None, True),
}


def pairs(share: list[tuple[int, int]]) -> tuple[list, list[str], list[str], list[int]]:
    """Prompts and teacher responses (one per prompt), student samples and each sample's prompt index."""
    prompts, teachers, students, group = [], [], [], []
    for index, (prompt_id, samples) in enumerate(share):
        prompts.append([{"role": "user", "content": f"Tell me about ship {prompt_id}."}])
        teachers.append(f"Arr, ship {prompt_id} be the finest vessel on the seven seas, matey!")
        students += [f"Ship {prompt_id} is a boat. " * (sample + 1) for sample in range(samples)]
        group += [index] * samples
    return prompts, teachers, students, group


def shard(disc, accelerator) -> None:
    """FSDP2 over every process: each decoder layer, the backbone (embeddings, final norm) and the score head, the
    modules :meth:`Discriminator.forward` calls, are their own units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    backbone = getattr(disc.model, disc.model.base_model_prefix)
    for module in [*backbone.layers, backbone, disc.model.score]:
        fully_shard(module, mesh=mesh)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, a sharded one gathered from every process (a collective)."""
    from torch.distributed.tensor import DTensor

    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def local_size(disc) -> tuple[int, int]:
    """Parameter elements held by this process, and in the whole discriminator."""
    from torch.distributed.tensor import DTensor

    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in disc.parameters())
    return held, sum(p.numel() for p in disc.parameters())


def run_update(
    model_dir: str | Path,
    share: list[tuple[int, int]],
    mode: str | None,
    accelerator=None,
    *,
    sharded: bool = False,
    max_grad_norm: float | None = None,
    checkpointing: bool = False,
) -> dict:
    """One step from a freshly loaded discriminator (the same weights in every process); what it did."""
    from gad.training.discriminator import Discriminator, DiscriminatorUpdater

    disc = Discriminator.from_pretrained(model_dir, seed=0)
    if checkpointing:
        disc.enable_activation_checkpointing()
    if sharded:
        shard(disc, accelerator)
    updater = DiscriminatorUpdater(
        disc, learning_rate=1.0, max_grad_norm=max_grad_norm, batch_size=BATCH_SIZE, accelerator=accelerator
    )
    # Plain SGD at lr 1: the parameters move by the gradient itself (summed across processes; unclipped by default,
    # so that a wrongly scaled one shows). AdamW's first step, about lr * sign(gradient), would hide a wrong scale.
    updater.optimizer = torch.optim.SGD(updater.trainable, lr=1.0)
    prompts, teachers, students, group = pairs(share)
    scores = None
    if mode is not None:
        score = disc.score_with_grad if mode == "fused" else disc.score
        scores = score([prompts[g] for g in group], students, batch_size=BATCH_SIZE)
    stats = updater.step(prompts, teachers, students, group, scores)
    return {
        "params": [full(p) for p in updater.trainable],
        "stats": stats.as_metrics(),
        "size": local_size(disc),
    }


def union(shares: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    return [pair for share in shares for pair in share]


def main(argv: list[str]) -> None:
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    model_dir, out = argv[0], Path(argv[1])
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=TIMEOUT_S))])
    rank = accelerator.process_index
    for name, (mode, shares) in SCENARIOS.items():
        result = run_update(model_dir, shares[rank], mode, accelerator)
        torch.save(result, out / f"{name}-rank{rank}.pt")
    for name, (scenario, max_grad_norm, checkpointing) in SHARDED.items():
        mode, shares = SCENARIOS[scenario]
        result = run_update(
            model_dir, shares[rank], mode, accelerator, sharded=True, max_grad_norm=max_grad_norm,
            checkpointing=checkpointing,
        )  # fmt: skip
        torch.save(result, out / f"{name}-rank{rank}.pt")
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1:])
