"""`use: dreambooth`: teach a text-to-image model one subject from a few photos.

Instance images with an instance prompt (`a photo of sks dog`); prior preservation with class
images the base model generates for the class prompt (cached in `train/class_images/`, 200 by
default) weighted by `prior_loss_weight`; full fine-tune or LoRA of the UNet, optionally the
text encoder too; sample images for a list of prompts after training.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.plugin.kinds import Trainer, TrainJob
from editkit.training.options import TrainOptions

SAMPLE_PROMPTS = ["a photo of sks dog on a beach", "a painting of sks dog in the style of "
                  "van gogh", "a photo of sks dog wearing a red hat"]


class DreamBoothOptions(TrainOptions):
    # the option that holds a model, and what it must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"base": "text-to-image"}

    base: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                      description="the text-to-image model to teach")
    instance_images: str = Field(..., description="folder of photos of the subject")
    instance_prompt: str = Field("a photo of sks dog", description="prompt every instance "
                                 "photo is trained with: a rare token (sks) and the class noun")
    class_prompt: str | None = Field("a photo of a dog", description="prompt the class images "
                                     "are generated from (needed for prior_preservation)")
    prior_preservation: bool = Field(True, description="also train on class images the base "
                                     "model made, so the class keeps its variety")
    class_images: int = Field(200, ge=1, description="class images generated and cached")
    class_inference_steps: int = Field(25, ge=1, description="DDIM steps of each generated "
                                       "class image")
    prior_loss_weight: float = Field(1.0, ge=0, description="weight of the class images' loss, "
                                     "added to the instance images' loss")
    mode: Literal["lora", "full"] = Field(
        "lora", description="lora: a LoRA on the UNet's attention; full: every UNet weight "
                            "(more memory; lower learning_rate)")
    rank: int = Field(16, ge=1, description="LoRA rank (mode: lora)")
    train_text_encoder: bool = Field(False, description="train the text encoder too (a LoRA "
                                     "on its attention in mode lora, every weight in full)")
    learning_rate: float = Field(1e-4, gt=0, description="1e-4 suits LoRA; use ~5e-6 for full")
    sample_prompts: list[str] = Field(default_factory=lambda: list(SAMPLE_PROMPTS),
                                      description="prompts sampled at each validation, to see "
                                      "the subject in new settings")
    samples_per_prompt: int = Field(2, ge=0, description="images per sample prompt, each from "
                                    "its own seed; 0: no samples")
    guidance_scale: float = Field(7.5, description="classifier-free guidance of the sample "
                                  "images")
    resolution: int = Field(512, ge=8, description="side of the square training crops in "
                            "pixels; class images and samples are made at this size too")
    batch_size: int = Field(1, ge=1, description="instance images per process per micro-batch "
                            "(prior_preservation adds as many class images)")
    steps: int = Field(400, ge=1, description="optimizer updates over the instance photos "
                       "(and the class images with prior_preservation)")

    @model_validator(mode="after")
    def _class_prompt(self) -> "DreamBoothOptions":
        if self.prior_preservation and not self.class_prompt:
            raise ValueError("prior_preservation needs a class_prompt (like 'a photo of a dog')")
        return self


class DreamBoothTrainer(Trainer):
    name = "dreambooth"
    Options = DreamBoothOptions

    def train(self, job: TrainJob) -> dict[str, Any]:
        from editkit.builtins.dreambooth.task import DreamBoothTask
        from editkit.training import loop

        task = DreamBoothTask(self.options, job.output_dir, job.seed)
        return loop.run(task, self.options, job.output_dir, job.seed, job.stats,
                        progress=job.progress)


@hookimpl
def register_trainers(register):
    register(DreamBoothTrainer)
