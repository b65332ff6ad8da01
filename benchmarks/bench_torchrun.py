"""What does logging every step cost a real (small) distributed training loop?

Run under torchrun, e.g. ``torchrun --standalone --nproc-per-node 4 -m benchmarks.bench_torchrun``:
each rank trains a small DDP model (gloo on CPU, NCCL on GPUs) and logs every
step, in rounds that alternate no logging, the standard library's FileHandler
and nvrxlog (node-local, aggregated by local rank 0), so all three are measured
in the same run. Rank 0 prints the median step time of each and the overhead.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

from nvrxlog import setup_logger

_TEXT = "%(asctime)s [%(levelname)s] [node] [workload:%(rank)s] %(filename)s:%(lineno)d %(message)s"


def torchrun_command(nproc: int, steps: int, rounds: int) -> list[str]:
    """The command that runs this benchmark under torchrun (from the repository root)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "benchmarks.bench_torchrun",
        "--steps",
        str(steps),
        "--rounds",
        str(rounds),
    ]


def _stdlib_logger(path: str) -> logging.Logger:
    logger = logging.getLogger("bench.stdlib")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(_TEXT, defaults={"rank": os.environ.get("RANK", "?")}))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per mode")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Imported here so that torchrun_command() works where PyTorch is not installed.
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    torch.manual_seed(rank)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(32, 64, device=device)
    y = torch.randn(32, 1, device=device)

    nvrx = setup_logger()
    stdlib = _stdlib_logger(os.path.join(tempfile.gettempdir(), f"nvrxlog-bench-stdlib-{rank}.log"))
    loggers = {"no logging": None, "stdlib FileHandler": stdlib, "nvrxlog": nvrx}
    times: dict[str, list[float]] = {name: [] for name in loggers}
    for round_ in range(args.rounds):
        for name, logger in loggers.items():
            dist.barrier()
            for step in range(args.steps):
                start = time.perf_counter()
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(ddp(x), y)
                loss.backward()
                optimizer.step()
                if logger is not None:
                    logger.info("round %d step %d loss %.4f", round_, step, loss.item())
                times[name].append(time.perf_counter() - start)

    medians = torch.tensor([statistics.median(times[name]) for name in loggers])
    dist.all_reduce(medians, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace of a step
    if rank == 0:
        base = medians[0].item()
        print(f"step time, {dist.get_world_size()} ranks ({'NCCL' if use_cuda else 'gloo, CPU'})")
        print("| mode | median step | vs no logging |\n|---|---|---|")
        for name, value in zip(loggers, medians.tolist(), strict=True):
            print(f"| {name} | {value * 1e3:.3f} ms | {value / base:.3f}x |")
    # Every rank finishes communicating before any tears down: a gloo peer that
    # closes its connections while another is still in the all_reduce can make
    # that rank die in std::terminate (seen once under heavy load).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
