"""`use: instruct-pix2pix`: full fine-tune of an InstructPix2Pix UNet on the kept pairs.

Starts from an InstructPix2Pix checkpoint, or from plain Stable Diffusion with `conv_in`
widened to 8 channels. Exports a diffusers pipeline folder to `train/final/`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from editkit import hookimpl
from editkit.plugin.kinds import Trainer, TrainJob
from editkit.training.editor import EditOptions


class FinetuneOptions(EditOptions):
    # the option that holds a model, and what it must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"base": "train-base"}

    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate, reached "
                                 "after the warm-up; lower than LoRA's, as every UNet weight "
                                 "is trained")


class InstructPix2PixTrainer(Trainer):
    name = "instruct-pix2pix"
    Options = FinetuneOptions

    def train(self, job: TrainJob) -> dict[str, Any]:
        from editkit.training import loop
        from editkit.training.editor import EditTask

        task = EditTask(self.options, job.dataset_dir, job.output_dir, job.seed)
        return loop.run(task, self.options, job.output_dir, job.seed, job.stats,
                        progress=job.progress)


@hookimpl
def register_trainers(register):
    register(InstructPix2PixTrainer)
