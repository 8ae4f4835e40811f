"""Helper of tests/test_distributed.py: the `gad` command line with a test hook, for a multi-process launch.

After each warmup or gad stage has trained, every process writes a hash of each tensor of its own discriminator to
``$GAD_TEST_HASHES/STAGE-rankN.json``, so that the test can check that the processes' copies stayed equal, and equal
to the saved one. The process group is set up here with a short timeout (accelerate then uses it as it is): on the
CPU transformers does not pass ``ddp_timeout`` on, and gloo's default is 30 minutes.

    ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/_distributed_train.py train --stage warmup,gad --config recipes/tiny-cpu.yaml ...
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

TIMEOUT_S = 45  # a collective that one process never joins fails after this


def tensor_hashes(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {name: hashlib.sha256(t.detach().cpu().numpy().tobytes()).hexdigest() for name, t in state.items()}


def whole_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The model's state dict with sharded (FSDP2, DTensor) tensors gathered whole (a collective: every process calls
    it), and how many parameter elements this process holds (``held``) of all of them (``total``)."""
    from torch.distributed.tensor import DTensor

    state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    params = list(model.parameters())
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    return state, {"held": held, "total": sum(p.numel() for p in params)}


def main(argv: list[str]) -> int:
    import torch.distributed as dist

    from gad.cli import main as gad_main
    from gad.training.gad_trainer import GADTrainer

    train = GADTrainer.train

    def train_and_hash(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        name = f"{Path(self.args.output_dir).name}-rank{self.accelerator.process_index}"
        state, size = whole_state(self.discriminator.model)
        (Path(os.environ["GAD_TEST_HASHES"]) / f"{name}.json").write_text(json.dumps(tensor_hashes(state)))
        (Path(os.environ["GAD_TEST_HASHES"]) / f"{name}-size.json").write_text(json.dumps(size))
        return result

    GADTrainer.train = train_and_hash
    dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))
    try:
        return gad_main(argv)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
