"""`use: lora`: peft LoRA on the InstructPix2Pix UNet, with 8-bit optimizers.

From plain Stable Diffusion the widened `conv_in` (the image channels) is trained too and saved
beside the LoRA as `conv_in.safetensors`; the LoRA file loads with
`StableDiffusionInstructPix2PixPipeline.load_lora_weights`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from editkit import hookimpl
from editkit.plugin.kinds import Trainer, TrainJob
from editkit.training.editor import EditOptions

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's text encoder


class LoraOptions(EditOptions):
    # the option that holds a model, and what it must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"base": "train-base"}

    rank: int = Field(16, ge=1, description="LoRA rank, the adapters' inner size: "
                      "higher can hold more change, with more parameters and a bigger file")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; default: the rank")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch "
                                "while training (parametrization: factors only)")
    target_modules: list[str] = Field(
        default_factory=lambda: list(ATTENTION), min_length=1, description="UNet layers that "
        "get a LoRA, by name suffix as peft matches them (default: the attention projections)")
    train_conv_in: bool | None = Field(
        None, description="train conv_in (the image channels); default: only when it was "
                          "widened from a plain text-to-image base")
    train_text_encoder: bool = Field(
        False, description="a LoRA of the same rank on the text encoder's attention too "
                           "(SDXL: both encoders) "
                           "(saved in the same file; diffusers' loaders apply it): the "
                           "encoder of a text-to-image base has read captions, never "
                           "instructions. One process only")
    text_encoder_modules: list[str] = Field(
        default_factory=lambda: list(TEXT_ATTENTION), min_length=1, description="text-encoder "
        "layers that get a LoRA with train_text_encoder (default: CLIP's attention projections)")
    parametrization: Literal["factors", "delta"] = Field(
        "factors", description="factors: train the LoRA's A and B (peft); delta: train each "
                               "targeted weight's difference D itself and export it as "
                               "rank-`rank` factors by SVD (exact when the rank is full): on "
                               "layers no wider than the rank, the same function for ~30% "
                               "less time a step (docs/history/training-speed.md)")


class LoraTrainer(Trainer):
    name = "lora"
    Options = LoraOptions

    def train(self, job: TrainJob) -> dict[str, Any]:
        from editkit.training import loop
        from editkit.training.editor import EditTask

        task = EditTask(self.options, job.dataset_dir, job.output_dir, job.seed,
                        lora=self.options)
        return loop.run(task, self.options, job.output_dir, job.seed, job.stats,
                        progress=job.progress)


@hookimpl
def register_trainers(register):
    register(LoraTrainer)
