"""`use: editor`: pairs an instruction editor makes. The before-image is drawn from the
triplet's input caption by a text-to-image model (or is the triplet's photo, when it carries
one); the after-image is what the editor makes of it, told the triplet's `edit`.

A strong editor (Qwen-Image-Edit, FLUX.1 Kontext, InstructPix2Pix, a trained run) then
teaches a smaller one: its edits become the smaller one's training pairs, judged and
filtered like any other pairs.

The before-image is the source image `use: prompt-to-prompt` draws with the same text-to-image
settings and seed (the same sampling loop, one image per sample instead of two: half the
cost), so a recipe can swap one renderer for the other and keep its before-images. The editor
is loaded as `editkit edit` loads it and runs through its family's `edit`, seeded as `editkit
edit --seed` seeds it: a pair's after-image is what `editkit edit` gives for that before-image,
seed, steps and guidance. Every setting goes into the pair's `settings`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from pydantic import Field, ValidationInfo, field_validator, model_validator

from editkit import hookimpl
from editkit.diffusion.renderer import TripletProblem, draw, planned, sample_seed
from editkit.errors import ModelError
from editkit.models.editors import DEFAULT_EDIT_MODEL
from editkit.plugin.kinds import PluginOptions, Reject, Renderer, RenderJob

Span = tuple[float, float]


def _span(value: Any) -> Any:
    return (value, value) if isinstance(value, (int, float)) else value


def _check_span(name: str, span: Span | None) -> None:
    if span is not None and not 0 <= span[0] <= span[1]:
        raise ValueError(f"{name}: the range must be of numbers 0 or more, low end first")


def editor_family(ref: str) -> str | None:
    """The family of editor `ref` from its configs (a tiny built-in is built to tell), or
    None when it cannot be told offline (a LoRA file: its base decides when it loads)."""
    from editkit.models import model_family, resolve
    from editkit.models.tiny import BUILDERS

    found = model_family(ref)
    if found is None and ref.strip() in BUILDERS:
        found = model_family(resolve(ref))
    return found


class EditorOptions(PluginOptions):
    # the options that hold a model, and what each must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"model": "render", "editor": "editor"}

    editor: str = Field(DEFAULT_EDIT_MODEL, description="the editor that makes the "
                        "after-images: anything editkit edit --model takes (hub id, folder, "
                        "run folder, LoRA file, built-in like shapes-edit)")
    model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                       description="text-to-image model that draws the before-images (Stable "
                       "Diffusion 1.x/2.x or SDXL: hub id, folder or built-in); not loaded "
                       "when every triplet carries its photo")
    samples: int = Field(4, ge=1, description="pairs per triplet, each from its own seed")
    steps: int | None = Field(None, ge=1, description="the editor's denoising steps; default: "
                              "its recommendation (editkit_weights.json), else its family's")
    guidance: Span | None = Field(None, description="the editor's text guidance: a value, or "
                                  "a range each sample draws one from (samples that drew "
                                  "different values are edited in separate calls); default: "
                                  "the editor's recommendation, else its family's "
                                  "(InstructPix2Pix: 7.5)")
    image_guidance: Span | None = Field(None, description="the editor's image guidance range "
                                        "(InstructPix2Pix editors only; flow editors have "
                                        "none); default: its recommendation, else 1.5")
    width: int = Field(512, ge=8, description="image width in pixels, a multiple of 8 (and of "
                       "what the editor needs: 16 for flow editors)")
    height: int = Field(512, ge=8, description="image height in pixels, a multiple of 8")
    before_steps: int = Field(50, ge=1, description="denoising steps of a before-image")
    before_guidance: Span = Field((7.5, 15.0), description="classifier-free guidance range "
                                  "of the before-images; each sample draws one")
    before_scheduler: str = Field("default", description="the before-images' sampler: "
                                  "default (the model's), ddim, euler, euler-ancestral, dpm++, "
                                  "unipc, ... or a diffusers class name")
    negative_prompt: str = Field("", description="text the before-images are guided away from")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), or cpu, cuda, "
                        "cuda:N, mps; one not available here is an error")
    dtype: str = Field("auto", description="weights' precision: auto (fp32 on the CPU, fp16 "
                       "elsewhere), fp32, fp16 or bf16")
    triplets_per_batch: int = Field(1, ge=1, description="triplets per batch: their before-"
                                    "images are drawn in one call, and their samples that drew "
                                    "the same guidance are edited in one call")

    @field_validator("guidance", "image_guidance", "before_guidance", mode="before")
    @classmethod
    def _one_or_two(cls, value: Any) -> Any:
        return _span(value)

    @field_validator("image_guidance")
    @classmethod
    def _editor_has_image_guidance(cls, value: Span | None, info: ValidationInfo
                                   ) -> Span | None:
        from editkit.models import FAMILIES, FLOW_FAMILIES

        editor = info.data.get("editor")
        family = editor_family(editor) if value is not None and editor else None
        if family in FLOW_FAMILIES:
            raise ValueError(f"'{editor}' is {FAMILIES[family]}, which has no image guidance; "
                             "drop image_guidance (guidance sets its text guidance)")
        return value

    @model_validator(mode="after")
    def _check(self) -> "EditorOptions":
        from editkit.diffusion.schedulers import SCHEDULERS

        for name in ("guidance", "image_guidance", "before_guidance"):
            _check_span(name, getattr(self, name))
        if self.width % 8 or self.height % 8:
            raise ValueError("width and height must be multiples of 8")
        scheduler = self.before_scheduler
        if scheduler not in (*SCHEDULERS, "default") and not scheduler.endswith("Scheduler"):
            raise ValueError(f"unknown before_scheduler '{scheduler}'; use default or one of: "
                             f"{', '.join(SCHEDULERS)}")
        return self


@dataclass
class Editor:
    """The loaded editor and what it runs with when the options leave it to the editor."""

    pipe: Any
    family: Any
    steps: int
    guidance: float
    image_guidance: float | None


@dataclass
class Sample:
    """One pair: its triplet, index, seed, the editor's draws and its before-image."""

    triplet: dict[str, Any]
    index: int
    seed: int
    before_guidance: float
    guidance: float
    image_guidance: float | None
    settings: dict[str, Any]
    before: Any = None  # PIL, once drawn (or the photo)
    after: Any = None  # PIL, once edited
    problem: Reject | None = None


class EditorRenderer(Renderer):
    name = "editor"
    Options = EditorOptions
    options: EditorOptions
    _pipe: Any = None
    _editor: Editor | None = None

    def pipeline(self) -> Any:
        """The text-to-image pipeline of the before-images, loaded once (and only when a
        triplet without a photo needs one)."""
        if self._pipe is None:
            from editkit.models import pick_device, pick_dtype
            from editkit.models.families import family_for

            device = pick_device(self.options.device)
            self._pipe = family_for(self.options.model).load_text_to_image(
                self.options.model, device, pick_dtype(device, self.options.dtype))
        return self._pipe

    def editor(self) -> Editor:
        """The editor, loaded once as `editkit edit` loads it, with the steps and guidance it
        runs with when the options do not say (as `editkit edit` picks them)."""
        if self._editor is None:
            from editkit.editing import model_multiple, pick_guidance
            from editkit.models.editors import load_edit_pipeline
            from editkit.models.families import family_named

            opts = self.options
            pipe, spec = load_edit_pipeline(opts.editor, device=opts.device, dtype=opts.dtype)
            family = family_named(spec.family)
            flow = getattr(family, "flow", False)
            if flow and opts.image_guidance is not None:
                raise ModelError(f"'{opts.editor}' is a {family.title} editor, which has no "
                                 "image guidance", "drop render.options.image_guidance")
            multiple = model_multiple(pipe)
            if opts.width % multiple or opts.height % multiple:
                raise ModelError(f"'{opts.editor}' edits images whose sides are multiples of "
                                 f"{multiple}, not {opts.width}x{opts.height}",
                                 f"set render.options.width and height to multiples of "
                                 f"{multiple}")
            recommended, steps = family.edit_defaults(pipe)
            picked = pick_guidance(None, None, spec.guidance or recommended)
            self._editor = Editor(pipe, family, opts.steps or spec.steps or steps,
                                  picked["text"], None if flow else picked["image"])
        return self._editor

    # --- the loop -----------------------------------------------------------------------

    def render(self, job: RenderJob) -> Iterator[dict[str, Any] | Reject]:
        editor = self.editor()
        samples: list[Sample] = []
        for item in planned(job.triplets, self.options.samples, self._photo):
            if isinstance(item, Reject):
                yield item
                continue
            triplet, photo = item
            for n in range(self.options.samples):
                samples.append(self._sample(job.seed, triplet, n, photo, editor))
        self._draw_before(samples)
        self._edit([s for s in samples if s.problem is None], editor)
        for s in samples:
            if s.problem is not None:
                yield s.problem
                continue
            yield {"triplet_id": s.triplet["id"], "sample": s.index, "settings": s.settings,
                   "before": s.before, "after": s.after}

    def _photo(self, triplet: dict[str, Any]) -> Any:
        """The triplet's photo fitted to the render size, or None when it carries none."""
        path = triplet.get("photo")
        if not path:
            return None
        from editkit.builtins.photo import fit_photo
        from editkit.captions.photos import read_photo
        from editkit.errors import InputError

        try:
            return fit_photo(read_photo(path), self.options.width, self.options.height)
        except InputError as exc:
            raise TripletProblem("unreadable photo", exc.message) from None

    def _sample(self, seed: int, triplet: dict[str, Any], n: int, photo: Any,
                editor: Editor) -> Sample:
        """Sample n of `triplet`: its seed and draws. The before-image's guidance is drawn
        first, as prompt-to-prompt draws its own, so the two renderers draw one image."""
        opts = self.options
        seed = sample_seed(seed, triplet["id"], n)
        rng = random.Random(seed)
        before_guidance = draw(rng, opts.before_guidance)
        guidance = editor.guidance if opts.guidance is None else draw(rng, opts.guidance)
        image_guidance = editor.image_guidance
        if opts.image_guidance is not None:
            image_guidance = draw(rng, opts.image_guidance)
        settings: dict[str, Any] = {
            "renderer": self.name, "seed": seed, "editor": opts.editor,
            "editor_family": editor.family.name, "steps": editor.steps, "guidance": guidance,
            "image_guidance": image_guidance, "width": opts.width, "height": opts.height}
        if photo is not None:
            settings.update(before="photo", photo=str(triplet["photo"]))
        else:
            settings.update(before="generated", model=opts.model,
                            before_steps=opts.before_steps, before_guidance=before_guidance,
                            before_scheduler=opts.before_scheduler,
                            negative_prompt=opts.negative_prompt)
        return Sample(triplet, n, seed, before_guidance, guidance, image_guidance, settings,
                      before=photo)

    def _draw_before(self, samples: list[Sample]) -> None:
        """Every before-image not a photo, in one sampling call; one that diverged (NaN)
        makes its sample a reject."""
        todo = [s for s in samples if s.before is None]
        if not todo:
            return
        import torch

        from editkit.diffusion.sampling import decode, sample_images, to_pil

        opts = self.options
        pipe = self.pipeline()
        latents = sample_images(pipe, [s.triplet["input"] for s in todo],
                                [s.seed for s in todo], [s.before_guidance for s in todo],
                                steps=opts.before_steps, height=opts.height, width=opts.width,
                                scheduler=opts.before_scheduler, negative=opts.negative_prompt)
        images = decode(pipe, latents)
        finite = torch.isfinite(latents).flatten(1).all(1) & \
            torch.isfinite(images).flatten(1).all(1)
        for s, image, ok in zip(todo, images, finite.tolist()):
            if ok:
                s.before = to_pil(image)
            else:
                s.problem = Reject("non-finite image (NaN)", "the sampler or the VAE diverged "
                                   "for this seed", data={"triplet_id": s.triplet["id"],
                                                          "sample": s.index,
                                                          "settings": s.settings})

    def _edit(self, samples: list[Sample], editor: Editor) -> None:
        """The after-images: samples that drew the same guidance are edited in one call of
        the family's `edit`, each with its own generator (seeded as `editkit edit --seed`)."""
        import torch

        groups: dict[tuple[float, float | None], list[Sample]] = {}
        for s in samples:
            groups.setdefault((s.guidance, s.image_guidance), []).append(s)
        for (guidance, image_guidance), group in groups.items():
            edited = editor.family.edit(
                editor.pipe, [s.triplet["edit"] for s in group], [s.before for s in group],
                editor.steps, guidance_scale=guidance, image_guidance_scale=image_guidance,
                generator=[torch.Generator("cpu").manual_seed(s.seed) for s in group])
            for s, after in zip(group, edited):
                s.after = after


@hookimpl
def register_renderers(register):
    register(EditorRenderer)
