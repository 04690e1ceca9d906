"""The settings an edit-model evaluation depends on, shared by `editkit eval` and the recipe's
`evaluate:` stage. Everything that changes a number is here, so it is recorded with it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLIP_DEFAULT = "openai/clip-vit-large-patch14"
DINO_DEFAULT = "facebook/dinov2-base"


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(50, ge=1, description="denoising steps per edit")
    guidance: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="text guidance scale; default: each "
        "editor's recommendation (its editkit_weights.json), else InstructPix2Pix's 7.5 "
        "(the rule `editkit edit` follows: editkit.editing.pick_guidance)")
    image_guidance: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="image guidance scale; default: each "
        "editor's recommendation, else InstructPix2Pix's 1.5")
    resolution: int = Field(512, ge=8, description="input images are resized to this square")
    seed: int | None = Field(None, description="edit seed (every row uses it); default: the "
                             "recipe's seed, or 0")
    limit: int | None = Field(200, ge=1, description="at most this many rows (first by id)")
    batch_size: int = Field(4, ge=1, description="edits per pipeline call")
    clip_model: str = Field(CLIP_DEFAULT, description="CLIP model for CLIP_im/dir/out")
    dino_model: str = Field(DINO_DEFAULT, description="DINOv2 model for DINO")
    device: str = Field("auto", description="auto, cuda, mps or cpu")

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE's factor), like {value // 8 * 8}")
        return value
