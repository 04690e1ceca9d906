"""`editkit edit --best-of N`: N candidates of each edit, a judge scores them, the best is kept.

An editor's sample can miss an edit that the next seed or a little more (or less) guidance
gets right, and a judge can tell which. The candidates differ by seed (seed .. seed+N-1) and
by guidance: candidate k runs at `GUIDANCE_GRID[k]` times the chosen guidance (text and image
guidance for InstructPix2Pix; a flow editor has only its own, swept by `FLOW_GRID`). Every
other candidate keeps the chosen guidance (an editor's recommendation is its best on
average); the rest step a quarter up or down, one scale at a time, so a sample that under-
or over-edits there has neighbours that may not. Candidate 1 is exactly the plain edit (the
seed, the chosen guidance); ties go to the lower number.

The judges, each a score where higher is better:

- `clip`: `clip_gain + clip_image`. The gain is how far the edit moved the image toward the
  instruction's text, cos(E(after), T(instruction)) - cos(E(before), T(instruction)) (with
  unit embeddings: the image's change projected on the instruction's direction; there are no
  captions to take InstructPix2Pix's caption direction from), and the image similarity
  cos(E(before), E(after)) keeps a candidate that redraws the whole picture from winning on
  the gain alone; the two weigh equally. On 64 held-out edits of the shapes world (seed 7,
  apart from the benchmark's) this picked a good edit more often than the direction from
  the empty prompt to the instruction, cos(E(after) - E(before), T(instruction) - T("")).
- `vlm`: the `vlm` filter's three scores (instruction carried out, everything else kept,
  quality; 1 to 10 each) summed; a candidate the model gave no score ranks last.
- a judge plugin (`shapes`): it reads the truth of the edit from the input image and the
  instruction (`Judge.truth_for`), then gives every candidate its verdict: 0 for a good edit,
  minus the number of things wrong otherwise.
"""

from __future__ import annotations

import math
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editkit.errors import InputError, RunError

BUILTIN_JUDGES = ("clip", "vlm")
VLM_BACKENDS = ("openai", "ollama")
# (text, image) guidance factors of candidates 1, 2, ...; repeated past the eighth (the
# seeds still differ). Candidate 1 is the plain edit.
GUIDANCE_GRID = ((1.0, 1.0), (1.25, 1.0), (1.0, 1.0), (1.0, 1.25), (1.0, 1.0), (0.8, 1.0),
                 (1.0, 1.0), (1.0, 0.8))
FLOW_GRID = (1.0, 1.25, 1.0, 0.8, 1.0, 1.5, 1.0, 0.67)
FRAME = (255, 200, 0)  # the best candidate's frame in the grid


@dataclass(frozen=True)
class Candidate:
    """One sample of an edit: its number (1-based), seed and guidance."""

    number: int
    seed: int
    guidance: float
    image_guidance: float | None

    def settings(self) -> dict[str, Any]:
        return {"candidate": self.number, "seed": self.seed, "guidance": self.guidance,
                "image_guidance": self.image_guidance}


def candidates(count: int, seed: int, guidance: float, image_guidance: float | None,
               sweep: bool = True) -> list[Candidate]:
    """`count` candidates over seeds seed..seed+count-1 and, with `sweep`, the guidance
    grid around `guidance` / `image_guidance` (None: a flow editor, text guidance only)."""
    out = []
    for k in range(count):
        if image_guidance is None:
            text, image = (FLOW_GRID[k % len(FLOW_GRID)] if sweep else 1.0), 1.0
        else:
            text, image = GUIDANCE_GRID[k % len(GUIDANCE_GRID)] if sweep else (1.0, 1.0)
        out.append(Candidate(k + 1, seed + k, round(guidance * text, 4),
                             None if image_guidance is None else round(image_guidance * image,
                                                                       4)))
    return out


@dataclass
class BestOf:
    """What `--best-of` asks for: how many candidates and which judge, with the judge's own
    settings (`clip_model` for clip; `judge_model`, `judge_backend`, `judge_url` for vlm)."""

    count: int
    judge: str = "clip"
    clip_model: str | None = None  # None: CLIP_DEFAULT
    judge_model: str | None = None  # None: the vlm filter's default for the backend
    judge_backend: str = "openai"
    judge_url: str | None = None  # openai: base URL; ollama: host
    sweep: bool = True

    def __post_init__(self) -> None:
        """Combinations that cannot work are refused before any image is read."""
        if self.count < 2:
            raise InputError(f"best-of {self.count} is below 2",
                             "give 2 or more candidates, like --best-of 8")
        if not self.judge.strip():
            raise InputError("the judge is empty", "use clip, vlm or a judge plugin's name")
        if self.clip_model is not None and self.judge != "clip":
            raise InputError(f"--clip-model is for --judge clip, not {self.judge}",
                             "drop --clip-model")
        if self.judge != "vlm":
            given = [name for name, value in (("--judge-model", self.judge_model),
                                              ("--judge-url", self.judge_url),
                                              ("--judge-backend",
                                               None if self.judge_backend == "openai"
                                               else self.judge_backend)) if value]
            if given:
                raise InputError(f"{', '.join(given)} configure --judge vlm, not "
                                 f"{self.judge}", f"drop {', '.join(given)} or use --judge vlm")
        if self.judge_backend not in VLM_BACKENDS:
            raise InputError(f"judge backend {self.judge_backend!r} is neither openai nor "
                             "ollama", "use openai or ollama")


class CandidateJudge(ABC):
    """Scores the candidates of one edit; `prepare` runs for every input before the editor
    loads, so an edit the judge cannot judge is refused first."""

    def prepare(self, image: Any, instruction: str) -> Any:
        return None

    @abstractmethod
    def score(self, before: Any, instruction: str, edits: list[Any],
              prepared: Any) -> list[dict[str, Any]]:
        """One dict per candidate: `score` (float, higher is better; None: no score) and
        what it is made of."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        ...


class ClipJudge(CandidateJudge):
    """CLIP gain toward the instruction plus image similarity (module docstring)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto"):
        from editkit.models.encoders import ClipEncoder

        self.encoder = ClipEncoder(model, device=device, dtype=dtype)

    def score(self, before: Any, instruction: str, edits: list[Any],
              prepared: Any) -> list[dict[str, Any]]:
        return clip_scores(self.encoder, before, instruction, edits)

    def describe(self) -> dict[str, Any]:
        return {"name": "clip", "model": self.encoder.describe(),
                "score": "clip_gain + clip_image"}


def clip_scores(encoder: Any, before: Any, instruction: str,
                edits: list[Any]) -> list[dict[str, Any]]:
    """The clip judge's numbers for each edit of `before` by `instruction`."""
    from editkit.models.encoders import clip_pair_scores

    images = encoder.encode_images([before] + list(edits))
    text = encoder.embed_texts([instruction])[instruction]
    out = []
    for after in images[1:]:
        pair = clip_pair_scores(images[0], after, text, text)
        gain = pair["clip_text_after"] - pair["clip_text_before"]
        out.append({"score": round(gain + pair["clip_image"], 6), "clip_gain": round(gain, 6),
                    "clip_image": round(pair["clip_image"], 6)})
    return out


class VLMJudge(CandidateJudge):
    """The `vlm` filter's scores of (input, candidate), summed."""

    def __init__(self, backend: str, model: str | None, url: str | None):
        from pydantic import ValidationError

        from editkit.builtins.vlm import VLMFilter, VLMOptions

        server = {"base_url": url} if backend == "openai" else {"host": url}
        try:
            options = VLMOptions(backend=backend, model=model, min_instruction=1,
                                 min_preserved=1, min_quality=1, **server)
        except ValidationError as exc:
            raise InputError(f"--judge vlm: {exc.errors()[0]['msg']}",
                             "see editkit edit --help") from None
        self.filter = VLMFilter(options)
        self.filter.asker()  # a missing key or server fails now, before the editor loads

    def score(self, before: Any, instruction: str, edits: list[Any],
              prepared: Any) -> list[dict[str, Any]]:
        from editkit.plugin.kinds import FilterJob

        with tempfile.TemporaryDirectory(prefix="editkit-best-of-") as folder:
            before_path = Path(folder) / "before.png"
            before.save(before_path)
            pairs = []
            for k, edit in enumerate(edits):
                path = Path(folder) / f"{k + 1}.png"
                edit.save(path)
                pairs.append({"id": str(k + 1), "before_path": str(before_path),
                              "after_path": str(path), "edit": instruction})
            results = {r["id"]: r for r in self.filter.score(FilterJob(pairs=pairs))}
        out = []
        for pair in pairs:
            result = results[pair["id"]]
            scores = result["scores"]
            out.append({"score": float(sum(scores.values())) if scores else None, **scores,
                        **({} if scores else {"reason": result["reason"]})})
        return out

    def describe(self) -> dict[str, Any]:
        opts = self.filter.options
        return {"name": "vlm", "backend": opts.backend, "model": self.filter.model(),
                "score": "vlm_instruction + vlm_preserved + vlm_quality"}


class PluginJudge(CandidateJudge):
    """A judge plugin that reads an edit's truth from the input image (`truth_for`)."""

    def __init__(self, name: str):
        from editkit.plugin.registry import registry

        self.name = name
        self.judge = registry().get("judge", name).cls()

    def prepare(self, image: Any, instruction: str) -> Any:
        return self.judge.truth_for(image, instruction)

    def score(self, before: Any, instruction: str, edits: list[Any],
              prepared: Any) -> list[dict[str, Any]]:
        out = []
        for edit in edits:
            verdict = self.judge.edit(prepared, edit)
            wrong = max(1, len(verdict.reasons))
            out.append({"score": 0.0 if verdict.good else -float(wrong), "good": verdict.good,
                        "reasons": list(verdict.reasons)})
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "plugin": type(self.judge).__module__,
                "score": "0 when good, else minus the number of things wrong"}


def make_judge(best: BestOf, device: str = "auto", dtype: str = "auto") -> CandidateJudge:
    """The judge `best` names, checked (the CLIP reference resolves, the vlm server's key is
    set, the plugin is installed) but with no model loaded."""
    if best.judge == "clip":
        from editkit.evaluation.settings import CLIP_DEFAULT

        return ClipJudge(best.clip_model or CLIP_DEFAULT, device=device, dtype=dtype)
    if best.judge == "vlm":
        return VLMJudge(best.judge_backend, best.judge_model, best.judge_url)
    return PluginJudge(best.judge)


def choose(scored: list[dict[str, Any]]) -> int:
    """The index of the best score (the first of equal ones); candidates without a score
    rank last, and none scored is an error."""
    ranked = [(i, s["score"]) for i, s in enumerate(scored)
              if s.get("score") is not None and math.isfinite(s["score"])]
    if not ranked:
        reason = next((s.get("reason") for s in scored if s.get("reason")), "no reason given")
        raise RunError(f"the judge scored none of the {len(scored)} candidates ({reason})",
                       "check the judge (its server, its model) and run again")
    return max(ranked, key=lambda item: (item[1], -item[0]))[0]


def summary(plan: list[Candidate], scored: list[dict[str, Any]], chosen: int,
            judge: dict[str, Any], paths: list[Path] | None = None) -> dict[str, Any]:
    """What the written image and the sidecar record: the judge, every candidate's settings
    and scores (and file, when saved), and which was kept."""
    rows = []
    for k, (candidate, scores) in enumerate(zip(plan, scored)):
        row = {**candidate.settings(), **scores, "best": k == chosen}
        if paths:
            row["path"] = str(paths[k])
        rows.append(row)
    return {"count": len(plan), "judge": judge, "chosen": plan[chosen].number,
            "score": scored[chosen]["score"], "candidates": rows}


def sidecar_path(target: Path) -> Path:
    """`<stem>.best-of.json` beside the written image."""
    return target.with_suffix(".best-of.json")


def mark_best(sheet: Any, tile: int, size: tuple[int, int], columns: int = 4) -> Any:
    """The grid with a frame around tile number `tile` (0 is the input)."""
    from PIL import ImageDraw

    width, height = size
    left, top = (tile % columns) * width, (tile // columns) * height
    line = max(1, min(width, height) // 32)
    ImageDraw.Draw(sheet).rectangle([left, top, left + width - 1, top + height - 1],
                                    outline=FRAME, width=line)
    return sheet
