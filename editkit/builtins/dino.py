"""`use: dino`: keep pairs whose before and after images share their structure.

DINOv2 CLS features see layout and objects rather than captions, so their cosine similarity
is a good check that an edit kept the scene (`min_similarity`); an optional upper bound
(`max_similarity`) rejects pairs where nothing visibly changed.
"""

from __future__ import annotations

from typing import Any, Iterator

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.evaluation.settings import DINO_DEFAULT
from editkit.plugin.kinds import Filter, FilterJob, PluginOptions


class DinoOptions(PluginOptions):
    model: str = Field(DINO_DEFAULT, description="DINOv2 model: hub id, folder or built-in")
    # cosine similarities lie in [-1, 1]: min_similarity -1 lets every pair through
    min_similarity: float = Field(0.6, ge=-1, le=1, description="structure kept: similarity "
                                  "at least (-1 to 1; -1: off)")
    max_similarity: float | None = Field(None, ge=-1, le=1, description="something changed: "
                                         "similarity at most (-1 to 1; null: off)")
    batch_size: int = Field(32, ge=1, description="images per model call")
    device: str = Field("auto", description="auto, cuda, mps or cpu")
    triplets_per_batch: int = Field(16, ge=1, description="triplets per scoring call/shard")

    @model_validator(mode="after")
    def _bounds(self) -> "DinoOptions":
        if self.max_similarity is not None and self.max_similarity < self.min_similarity:
            raise ValueError(f"max_similarity {self.max_similarity} is below min_similarity "
                             f"{self.min_similarity}: no pair could pass")
        return self


class DinoFilter(Filter):
    name = "dino"
    Options = DinoOptions

    def score(self, job: FilterJob) -> Iterator[dict[str, Any]]:
        opts = self.options
        from editkit.models.encoders import (
            UNREADABLE,
            DinoEncoder,
            cosine,
            plugin_encoder,
            unreadable,
        )

        encoder = plugin_encoder(self, DinoEncoder, job.cache_dir)
        images = encoder.embed_files(p[k] for p in job.pairs for k in ("before_path",
                                                                        "after_path"))
        for pair in job.pairs:
            problem = unreadable(pair, images)
            if problem:
                yield {"id": pair["id"], "scores": {}, "keep": False, "criterion": UNREADABLE,
                       "reason": problem}
                continue
            similarity = cosine(images[str(pair["before_path"])],
                                images[str(pair["after_path"])])
            criterion = reason = None
            if similarity < opts.min_similarity:
                criterion = "min_similarity"
                reason = f"dino similarity {similarity:.3f} < min_similarity {opts.min_similarity}"
            elif opts.max_similarity is not None and similarity > opts.max_similarity:
                criterion = "max_similarity"
                reason = (f"dino similarity {similarity:.3f} > max_similarity "
                          f"{opts.max_similarity} (nothing changed)")
            yield {"id": pair["id"], "scores": {"dino": similarity}, "keep": criterion is None,
                   "criterion": criterion, "reason": reason}
        job.stats.update(encoder.stats.as_dict(), model=encoder.describe())


@hookimpl
def register_filters(register: Any) -> None:
    register(DinoFilter)
