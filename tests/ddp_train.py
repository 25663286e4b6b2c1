"""Run under torchrun: train a few steps with DDP, then save this rank's weights (for a test); rank 0 prints how
many object-store requests the run retried (a store at a URL).

    ddp_train.py STORE OUT [BATCH ACCUM]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import TrainConfig  # noqa: E402
from train.loop import run_train  # noqa: E402

store, out = sys.argv[1], Path(sys.argv[2])
batch, accum = (int(a) for a in sys.argv[3:5]) if len(sys.argv) > 3 else (2, 1)
result = run_train(TrainConfig(store=store, out=out, preset="ac_test", steps=4, batch_size=batch, accum_steps=accum,
                               workers=0, val_every=0, ckpt_every=100, frames=4, device="cpu"))
rank = torch.distributed.get_rank()
torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
if rank == 0:
    print(f"retried {result.retries}")
