"""Fine-tunes a saved full MARNet on images alone with `transformers.Trainer` and gradient checkpointing, which makes
Trainer wrap the model in DDP with `find_unused_parameters=False` when launched on several processes.

Usage (tests/test_trainer.py): `accelerate launch ... tests/image_only_trainer_run.py MODEL_DIR OUTPUT_DIR`. Writes the
fine-tuned model and `run.json` (world size, how the model was wrapped) into OUTPUT_DIR.
"""

import json
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

import modeling_marnet  # noqa: F401  (registers MARNet with the Auto classes)


class RandomImages(torch.utils.data.Dataset):
    """Images and labels only: no privileged text."""

    def __init__(self, size, image_size, num_labels):
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def main(model_dir, output_dir):
    model = AutoModelForImageClassification.from_pretrained(model_dir, image_only_training=True)
    args = TrainingArguments(
        output_dir,
        use_cpu=True,
        activation_checkpointing=True,
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
    )
    image_size = model.config.vision_config.image_size
    trainer = Trainer(model=model, args=args, train_dataset=RandomImages(12, image_size, model.config.num_labels))
    trainer.train()
    if trainer.is_world_process_zero():
        trainer.save_model(output_dir)
        wrapped = trainer.model_wrapped
        run = {
            "world_size": trainer.args.world_size,
            "ddp": isinstance(wrapped, DistributedDataParallel),
            "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
            "steps": trainer.state.global_step,
        }
        (Path(output_dir) / "run.json").write_text(json.dumps(run))


if __name__ == "__main__":
    main(*sys.argv[1:3])
