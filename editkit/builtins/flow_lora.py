"""`use: flow-lora`: a LoRA on FLUX.1 Kontext, FLUX.2 klein or Qwen-Image-Edit, trained with
flow matching on editkit's pairs (`editkit.training.flow`), optionally on a 4- or 8-bit frozen
base (QLoRA). The LoRA file loads with the family's diffusers pipeline's `load_lora_weights`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from editkit import hookimpl
from editkit.plugin.kinds import Trainer, TrainJob
from editkit.training.flow import FlowLoraOptions


class FlowLoraTrainerOptions(FlowLoraOptions):
    # the option that holds a model, and what it must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"base": "flow-base"}


class FlowLoraTrainer(Trainer):
    name = "flow-lora"
    Options = FlowLoraTrainerOptions

    def train(self, job: TrainJob) -> dict[str, Any]:
        from editkit.training import loop
        from editkit.training.flow import FlowEditTask

        task = FlowEditTask(self.options, job.dataset_dir, job.output_dir, job.seed)
        return loop.run(task, self.options, job.output_dir, job.seed, job.stats,
                        progress=job.progress)


@hookimpl
def register_trainers(register):
    register(FlowLoraTrainer)
