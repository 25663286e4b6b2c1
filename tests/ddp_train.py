"""Run under torchrun: train a few steps with DDP, then save this rank's weights (for a test)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.loop import TrainConfig, run_train  # noqa: E402

store, out = Path(sys.argv[1]), Path(sys.argv[2])
result = run_train(TrainConfig(store=store, out=out, preset="ac_test", steps=4, batch_size=2, workers=0,
                               val_every=0, ckpt_every=100, frames=4))
rank = torch.distributed.get_rank()
torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
