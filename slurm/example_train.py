"""A stand-in training script: every rank logs each step through nvrxlog.

Run it under srun (or torchrun); set NVRX_EXAMPLE_STEPS to change the length.
"""

from __future__ import annotations

import os
import random
import time

from nvrxlog import setup_logger

# Launchers like torchrun set RANK/LOCAL_RANK; under plain srun, frameworks
# usually derive them from SLURM's task ids, as done here.
os.environ.setdefault("RANK", os.environ.get("SLURM_PROCID", "0"))
os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))

log = setup_logger()
rank = int(os.environ["RANK"])
steps = int(os.environ.get("NVRX_EXAMPLE_STEPS", "100"))
rng = random.Random(rank)
loss = 2.0
log.info("rank %d starting %d steps", rank, steps)
for step in range(steps):
    loss *= 0.98 + rng.random() * 0.01
    log.info("rank %d step %d loss %.4f", rank, step, loss)
    time.sleep(0.002)
log.info("rank %d done", rank)
