"""A small DDP job for the tests (gloo, CPU): local rank 0 may crash at a step; a DataLoader may keep workers.

TEST_CRASH_AT: the step at which rank 0 raises (none by default); TEST_WORKERS: data-loader workers
(persistent); TEST_CAPTURE: nvrxlog's capture; TEST_PLAIN=1: the same job with stdlib logging only.
"""

import logging
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    if os.environ.get("TEST_PLAIN"):
        logging.basicConfig(level=logging.INFO)
        log = logging.getLogger("plain")
    else:
        from nvrxlog import setup_logger

        log = setup_logger(capture=os.environ.get("TEST_CAPTURE") or None)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.utils.data.TensorDataset(torch.randn(4096, 16), torch.randn(4096, 1))
    workers = int(os.environ.get("TEST_WORKERS", "0"))
    loader = torch.utils.data.DataLoader(data, batch_size=32, num_workers=workers, persistent_workers=workers > 0)
    crash_at = int(os.environ.get("TEST_CRASH_AT", "-1"))
    for step, (x, y) in enumerate(loader):
        if step == crash_at and rank == 0:
            raise RuntimeError(f"rank 0 diverged at step {step}")
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        log.info("rank %d step %d loss %.4f", rank, step, loss.item())
        if step >= 99:
            break
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
