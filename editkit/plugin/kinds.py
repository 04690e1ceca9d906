"""The plugin contract: one base class per kind, and the jobs the stages hand to plugins.

A plugin class has a `name` (lowercase, hyphenated), a nested pydantic `Options` model that
forbids extra fields, and the one method its kind needs. The stage drivers in `editkit.run.stages`
own the run folder: plugins compute, the core writes records, images and resume state.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, NamedTuple

from pydantic import BaseModel, ConfigDict

__all__ = ["PluginOptions", "Plugin", "Reject", "CaptionJob", "CaptionGenerator",
           "IndexedCaptionGenerator", "RenderJob", "Renderer", "FilterJob", "Filter", "TrainJob",
           "Trainer", "Verdict", "HeldOut", "Judge"]

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
    """`dataset_dir` holds the pairs (columns input_image, edit_prompt, edited_image): read
    them with `editkit.run.folder.read_dataset(dataset_dir).split("train")`, which knows every
    layout. Write checkpoints and final weights under `output_dir`; resume from it."""

    dataset_dir: Path
    output_dir: Path
    seed: int
    stats: dict[str, Any] = field(default_factory=dict)
    # the run's progress display (`editkit.console.Progress`): `add("train", total=steps,
    # completed=resumed_step)`, then `update(step, loss=...)`; None outside a run
    progress: Any = None


class Trainer(Plugin):
    """Trains an edit model; returns a dict describing the weights (at least `weights`)."""

    kind = "trainer"
    method = "train"

    @abstractmethod
    def train(self, job: TrainJob) -> dict[str, Any]:
        ...


# --- judge ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """A judge's word on one pair or one edit: good or not, and every reason why not.

    `kind` groups verdicts for per-kind numbers (the edit kind: colour, size, ...);
    `detail` holds what the judge saw, for the record (JSON-able)."""

    good: bool
    reasons: list[str] = field(default_factory=list)
    kind: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class HeldOut(NamedTuple):
    """One held-out edit drawn by the domain's truth, not by a model. `truth` is whatever
    the judge needs to judge the edit later (JSON-able); `input`/`output` are captions of
    the image before and after the edit, when the domain has them."""

    image: Any  # PIL image
    instruction: str
    truth: dict[str, Any]
    input: str = ""
    output: str = ""


class Judge(Plugin):
    """Knows a domain's truth, so every stage can be scored against it instead of against
    another model's opinion. `pair` judges a rendered (before, after) pair given its record
    (the pair's triplet fields included); `held_out` draws inputs with their truth; `edit`
    judges an editor's output for one of them. A streetview judge could be a detector."""

    kind = "judge"
    method = "pair"
    methods: ClassVar[tuple[str, ...]] = ("pair", "held_out", "edit")

    @abstractmethod
    def pair(self, record: dict[str, Any], before: Any, after: Any) -> Verdict:
        """Was the triplet's edit made between `before` and `after` (PIL), and only it?"""

    @abstractmethod
    def held_out(self, count: int, seed: int) -> list[HeldOut]:
        """`count` inputs with instructions and truth, a pure function of (count, seed)."""

    @abstractmethod
    def edit(self, truth: dict[str, Any], edited: Any) -> Verdict:
        """Did `edited` (PIL) make the instructed change and keep everything else?"""

    def truth_for(self, image: Any, instruction: str) -> dict[str, Any]:
        """The truth `edit` needs to judge an edit of any `image` (PIL) by `instruction`, so
        the judge can choose among an editor's candidates (`editkit edit --best-of`). A judge
        that can read the truth from the image overrides this; the rest cannot judge images
        they did not draw, and say so before any model loads."""
        from editkit.errors import InputError

        raise InputError(f"judge '{self.name}' judges only the held-out edits it draws, not "
                         "an edit of a given image", "use --judge clip or --judge vlm")


KINDS: dict[str, type[Plugin]] = {
    "caption generator": CaptionGenerator,
    "renderer": Renderer,
    "filter": Filter,
    "trainer": Trainer,
    "judge": Judge,
}
HOOK_FOR_KIND = {
    "caption generator": "register_caption_generators",
    "renderer": "register_renderers",
    "filter": "register_filters",
    "trainer": "register_trainers",
    "judge": "register_judges",
}
