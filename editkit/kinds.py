"""The plugin contract: one base class per kind, and the jobs the stages hand to plugins.

A plugin class has a `name` (lowercase, hyphenated), a nested pydantic `Options` model that
forbids extra fields, and the one method its kind needs. The stage drivers in `editkit.stages`
own the run folder: plugins compute, the core writes records, images and resume state.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PluginOptions(BaseModel):
    """Base for a plugin's `Options`: unknown fields are errors, never silent defaults."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Reject:
    """A record that could not be made or failed a check, kept on disk with its reason."""

    reason: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Plugin(ABC):
    """Shared by all kinds: the validated options arrive in the constructor."""

    kind: ClassVar[str] = ""
    method: ClassVar[str] = ""
    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = PluginOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()


# --- captions ---------------------------------------------------------------------------


@dataclass
class CaptionJob:
    """What the captions stage asks for.

    `start` is the index of the next attempt (kept + rejected records already on disk): a
    deterministic generator derives attempt `start + k` from `(seed, start + k)` alone, so a
    resumed run continues the same stream. `seen` holds normalised keys of kept triplets.
    `stats` is merged into the manifest (token usage, cost, ...). The stage updates `kept`
    (triplets kept so far in this job) after each batch, so a generator paying per request
    can ask for no more than it still needs.
    """

    count: int
    seed: int
    start: int = 0
    seen: set[str] = field(default_factory=set)
    work_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    kept: int = 0


class CaptionGenerator(Plugin):
    """Writes {input, edit, output} triplets. Yield one list per request or batch: the stage
    writes each list as one atomic shard, so a kill loses at most the batch in flight."""

    kind = "caption generator"
    method = "generate"

    @abstractmethod
    def generate(self, job: CaptionJob) -> Iterator[list[dict[str, Any] | Reject]]:
        ...


class IndexedCaptionGenerator(CaptionGenerator):
    """A generator whose triplet number i depends only on (seed, i): implement `triplet`.

    Resuming is then exact: the stream continues from `job.start` as if never interrupted.
    The batch size (triplets per written shard) is the `batch` option when there is one.
    """

    def generate(self, job: CaptionJob) -> Iterator[list[dict[str, Any]]]:
        size = int(getattr(self.options, "batch", 64))
        index = job.start
        while True:
            yield [self.triplet(job.seed, index + k) for k in range(size)]
            index += size

    @abstractmethod
    def triplet(self, seed: int, index: int) -> dict[str, Any]:
        """The triplet at `index` for `seed`: a pure function of both."""


# --- render -----------------------------------------------------------------------------


@dataclass
class RenderJob:
    """Triplet records to render (each has `id`, `input`, `edit`, `output`, extras)."""

    triplets: list[dict[str, Any]]
    seed: int
    work_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Renderer(Plugin):
    """Turns triplets into (before, after) pairs. Yields dicts with `triplet_id`, `sample`,
    `before`, `after` (PIL images), optional `mask` (PIL) and `settings` (seed, guidance...),
    or a `Reject` whose data has `triplet_id` (and `sample`)."""

    kind = "renderer"
    method = "render"

    @abstractmethod
    def render(self, job: RenderJob) -> Iterator[dict[str, Any] | Reject]:
        ...


# --- filters ----------------------------------------------------------------------------


@dataclass
class FilterJob:
    """Pair records of whole triplets (all samples of a triplet arrive together), with
    `before_path`/`after_path` resolved to files. `cache_dir` persists across re-runs."""

    pairs: list[dict[str, Any]]
    cache_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Filter(Plugin):
    """Scores pairs. Yields one dict per pair: `id`, `scores` (name -> float), `keep` (bool)
    and `reason` (why it was rejected, or None)."""

    kind = "filter"
    method = "score"

    @abstractmethod
    def score(self, job: FilterJob) -> Iterable[dict[str, Any]]:
        ...


# --- train ------------------------------------------------------------------------------


@dataclass
class TrainJob:
    """`dataset_dir` holds `metadata.jsonl` + images (columns input_image, edit_prompt,
    edited_image). Write checkpoints and final weights under `output_dir`; resume from it."""

    dataset_dir: Path
    output_dir: Path
    seed: int
    stats: dict[str, Any] = field(default_factory=dict)


class Trainer(Plugin):
    """Trains an edit model; returns a dict describing the weights (at least `weights`)."""

    kind = "trainer"
    method = "train"

    @abstractmethod
    def train(self, job: TrainJob) -> dict[str, Any]:
        ...


KINDS: dict[str, type[Plugin]] = {
    "caption generator": CaptionGenerator,
    "renderer": Renderer,
    "filter": Filter,
    "trainer": Trainer,
}
HOOK_FOR_KIND = {
    "caption generator": "register_caption_generators",
    "renderer": "register_renderers",
    "filter": "register_filters",
    "trainer": "register_trainers",
}
