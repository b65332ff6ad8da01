"""A tiny real training job for the library tests, run under torchrun: transformers or Lightning on CPU.

nvrxlog is set up first, with capture on, then the library is imported, as
a user's script would; models are built from a config (no weights are
downloaded) and trained on synthetic data for a few steps.
"""

from __future__ import annotations

import os
import sys


def transformers_job(out_dir: str) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
    data = [{"input_ids": torch.randint(0, 64, (16,)), "labels": torch.randint(0, 64, (16,))} for _ in range(32)]
    args = TrainingArguments(
        output_dir=out_dir,
        max_steps=6,
        per_device_train_batch_size=4,
        logging_steps=2,
        log_level="info",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo",
    )
    Trainer(model=model, args=args, train_dataset=data).train()


def lightning_job() -> None:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch: list, index: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randn(64, 1)), batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=True,
    )
    trainer.fit(Tiny(), data)


def main() -> None:
    from nvrxlog import setup_logger

    log = setup_logger(capture="all")
    log.info("job starting")
    if sys.argv[1] == "transformers":
        transformers_job(os.path.join(sys.argv[2], f"out{os.environ.get('RANK', '0')}"))
    else:
        lightning_job()
    log.info("job done")


if __name__ == "__main__":
    main()
