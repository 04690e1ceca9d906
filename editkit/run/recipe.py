"""Recipes: YAML files that pick a plugin and its options for each stage.

Validation has two phases and reports every problem at once, each with its path: first the
structure (known keys, types), then each `use:` resolved to an installed plugin whose `Options`
model checks the `options`. Neither phase imports torch.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from editkit.errors import RecipeError
from editkit.evaluation.settings import EvalSettings

STAGES = ("captions", "render", "filters", "train", "evaluate")
KIND_FOR_STAGE = {
    "captions": "caption generator",
    "render": "renderer",
    "filters": "filter",
    "train": "trainer",
    "evaluate": "judge",  # evaluate.judge
}
SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|token)$", re.IGNORECASE)


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    use: str
    options: dict[str, Any] = Field(default_factory=dict)


class CaptionsSpec(StageSpec):
    count: int = Field(100, gt=0)
    # The model whose CLIP tokenizer counts caption tokens (default: render.options.model).
    tokenizer: str | None = None


class JudgeSpec(StageSpec):
    """`evaluate.judge`: a judge plugin and how many held-out inputs it draws."""

    count: int = Field(32, gt=0, description="held-out inputs the judge draws for the editors")


class EvaluateSpec(EvalSettings):
    """`evaluate:` holds out `split` of the triplets (by id) and measures the base edit model
    and the trained one on them; the rest are `editkit eval`'s settings."""

    split: float = Field(0.05, gt=0, lt=1, description="fraction of triplets held out")
    base: str | None = Field(None, description="edit model to compare against; default: the "
                             "trainer's `base` option, else timbrooks/instruct-pix2pix")
    models: list[str] = Field(default_factory=list, description="more edit models to measure")
    judge: JudgeSpec | None = Field(None, description="a judge plugin that knows the domain's "
                                    "truth: pair accuracy, filter precision/recall, editor "
                                    "success on held-out inputs")


class RecipeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    output: str
    seed: int = 0
    captions: CaptionsSpec | None = None
    render: StageSpec | None = None
    filters: list[StageSpec] = Field(default_factory=list)
    train: StageSpec | None = None
    evaluate: EvaluateSpec | None = None

    @field_validator("output")
    @classmethod
    def _output_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder for the run, like runs/streetview")
        return value


@dataclass
class StagePlugin:
    """A stage's plugin, resolved: its registry entry and validated options."""

    stage: str  # captions, render, filters.0, train
    info: Any  # editkit.plugin.registry.PluginInfo
    options: BaseModel

    def create(self) -> Any:
        return self.info.cls(self.options)

    def options_dict(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json")


@dataclass
class Recipe:
    model: RecipeModel
    source: str
    plugins: dict[str, StagePlugin]

    def resolved(self) -> dict[str, Any]:
        """The recipe with every option filled in by its plugin's defaults."""
        data = self.model.model_dump(mode="json", exclude_none=True)
        for stage, plugin in self.plugins.items():
            if stage.startswith("filters."):
                data["filters"][int(stage.split(".")[1])]["options"] = plugin.options_dict()
            elif stage == "evaluate.judge":
                data["evaluate"]["judge"]["options"] = plugin.options_dict()
            else:
                data[stage]["options"] = plugin.options_dict()
        return data

    def stages(self) -> list[str]:
        out = [s for s in ("captions", "render") if getattr(self.model, s) is not None]
        if self.model.filters:
            out.append("filters")
        if self.model.train is not None:
            out.append("train")
        if self.model.evaluate is not None:
            out.append("evaluate")
        return out

    @property
    def output(self) -> Path:
        return Path(self.model.output)


# --- loading ----------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RecipeError(str(path), [("", "file not found; check the path")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [("", f"not UTF-8 text (byte {exc.start} is "
                                       f"{exc.object[exc.start]:#04x}): a recipe is a YAML "
                                       "text file; check that this is the recipe")]) from None
    except OSError as exc:
        raise RecipeError(str(path), [("", f"cannot be read ({exc.strerror or exc}); check "
                                       "the path and its permissions")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise RecipeError(str(path), [("", f"not valid YAML: {where}{problem}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(str(path), [("", "a recipe must be a YAML mapping (key: value lines)")])
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parse as YAML; list items by index)."""
    problems: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append((item, "an override is key.path=value, like render.options.steps=30"))
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.split(".")
        try:
            for i, part in enumerate(parts[:-1]):
                node = _step(node, part, create=not parts[i + 1].isdigit())
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append((key, "override path does not exist in the recipe"))
    if problems:
        raise RecipeError(source, problems)
    return data


def _step(node: Any, part: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[int(part)]
    if part not in node or node[part] is None:
        node[part] = {} if create else []
    return node[part]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe in file `path` (or the built-in recipe of that name), overridden, validated."""
    from editkit.run.builtin_recipes import resolve_recipe

    path = resolve_recipe(path)
    data = read_yaml(path)
    apply_overrides(data, list(overrides or []), str(path))
    return validate(data, str(path))


def validate(data: dict[str, Any], source: str) -> Recipe:
    from editkit.plugin.registry import registry

    problems: list[tuple[str, str]] = []
    model: RecipeModel | None = None
    try:
        model = RecipeModel.model_validate(data)
    except ValidationError as exc:
        problems += [_format_error(err, RecipeModel) for err in exc.errors()]

    reg = registry()
    plugins: dict[str, StagePlugin] = {}
    for stage, spec in _stage_specs(data):
        use = spec.get("use")
        if not isinstance(use, str):
            continue  # phase one already said so
        kind = KIND_FOR_STAGE[stage.split(".")[0]]
        if (kind, use) not in reg.plugins:
            from editkit.plugin.registry import unknown_plugin_message

            problems.append((f"{stage}.use", unknown_plugin_message(kind, use, reg.names(kind))))
            continue
        info = reg.plugins[(kind, use)]
        options = spec.get("options") or {}
        if not isinstance(options, dict):
            continue
        secrets = _secret_problems(options, f"{stage}.options")
        problems += secrets
        try:
            validated = info.cls.Options.model_validate(options)
        except ValidationError as exc:
            said = {path for path, _ in secrets}
            for err in exc.errors():
                path, msg = _format_error(err, info.cls.Options)
                path = f"{stage}.options.{path}" if path else f"{stage}.options"
                if path not in said:
                    problems.append((path, msg))
            continue
        plugins[stage] = StagePlugin(stage, info, validated)

    problems += _model_problems(plugins, model)
    problems += _device_problems(plugins, model)
    if model is not None:
        from editkit.run.outputs import folder_problem

        where = folder_problem(model.output, "run folder")
        if where:
            problems.append(("output", where))
    from editkit.run.builtin_recipes import missing_data

    problems += missing_data(data)  # a built-in recipe's sample inputs, not copied here
    if model is not None and not problems:
        if model.filters and model.render is None:
            problems.append(("filters", "filters need a render stage to score its pairs"))
        if model.evaluate is not None and model.render is None:
            problems.append(("evaluate", "evaluate holds out pairs of the render stage; add a "
                             "render stage, or measure a dataset with editkit eval"))
        problems += _photo_problems(plugins)
        if not any([model.captions, model.render, model.filters, model.train]):
            problems.append(("", f"a recipe needs at least one stage: {', '.join(STAGES)}"))
    if problems:
        reg.check_conflicts()
        raise RecipeError(source, problems)
    assert model is not None
    reg.check_conflicts()
    return Recipe(model=model, source=source, plugins=plugins)


def _photo_problems(plugins: dict[str, StagePlugin]) -> list[tuple[str, str]]:
    """A renderer that renders photos (its Options' `NEEDS_PHOTOS`) after a caption generator
    that has no photos would reject every triplet: refused before any work."""
    render, captions = plugins.get("render"), plugins.get("captions")
    if render is None or captions is None or \
            not getattr(type(render.options), "NEEDS_PHOTOS", False):
        return []
    if getattr(captions.options, "photos", None):
        return []
    use = render.info.name
    return [("render.use", f"'{use}' renders triplets made from photos, and captions "
             f"'{captions.info.name}' has none: set captions.options.photos to a folder of "
             "photos (openai, ollama, shapes-photos), or use prompt-to-prompt")]


def _model_problems(plugins: dict[str, StagePlugin],
                    model: RecipeModel | None) -> list[tuple[str, str]]:
    """Model references known to fail before any work: a local path that does not exist, a
    name that is nothing, a family editkit does not support or one that cannot do the job.
    Each plugin names its model options and their roles in its Options' `MODEL_OPTIONS`."""
    from editkit.models import reference_problem

    refs: list[tuple[str, str, str]] = []  # (path, reference, role)
    for stage, plugin in plugins.items():
        roles = getattr(type(plugin.options), "MODEL_OPTIONS", None) or {}
        for name, role in roles.items():
            value = getattr(plugin.options, name, None)
            if isinstance(value, str):
                refs.append((f"{stage}.options.{name}", value, role))
    if model is not None and model.evaluate is not None:  # edit models to measure
        if model.evaluate.base:
            refs.append(("evaluate.base", model.evaluate.base, "edit"))
        refs += [(f"evaluate.models.{i}", ref, "edit")
                 for i, ref in enumerate(model.evaluate.models)]
    problems = []
    for path, ref, role in refs:
        problem = reference_problem(ref, role)
        if problem:
            problems.append((path, problem))
    return problems


def _device_problems(plugins: dict[str, StagePlugin],
                     model: RecipeModel | None) -> list[tuple[str, str]]:
    """Settings that need a GPU, on a machine without one: refused now rather than when their
    stage starts, after the stages before it have run. torch is imported only when a setting
    asks for a GPU."""
    options: list[tuple[str, Any]] = [(f"{stage}.options", p.options)
                                      for stage, p in plugins.items()]
    if model is not None and model.evaluate is not None:
        options.append(("evaluate", model.evaluate))
    problems = []
    for prefix, values in options:
        if getattr(values, "mixed_precision", None) == "fp16" and not _training_gpu():
            problems.append((f"{prefix}.mixed_precision",
                             "fp16 needs a GPU and training here runs on the CPU; use bf16 "
                             "or no"))
        device = getattr(values, "device", None)
        if isinstance(device, str) and device.split(":")[0] in ("cuda", "mps") and \
                not _device_available(device):
            problems.append((f"{prefix}.device", f"'{device}' is not available on this "
                             "machine; use auto or cpu"))
    return problems


def _training_gpu() -> bool:
    """What the trainer will find: a CUDA GPU, not switched off by ACCELERATE_USE_CPU."""
    from editkit.run.distributed import uses_cpu

    return not uses_cpu()


def _device_available(device: str) -> bool:
    import torch

    kind, _, index = device.partition(":")
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if not torch.cuda.is_available():
        return False
    return not index or (index.isdigit() and int(index) < torch.cuda.device_count())


def _stage_specs(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for stage in ("captions", "render", "train"):
        if isinstance(data.get(stage), dict):
            specs.append((stage, data[stage]))
    filters = data.get("filters")
    if isinstance(filters, list):
        specs += [(f"filters.{i}", f) for i, f in enumerate(filters) if isinstance(f, dict)]
    evaluate = data.get("evaluate")
    if isinstance(evaluate, dict) and isinstance(evaluate.get("judge"), dict):
        specs.append(("evaluate.judge", evaluate["judge"]))
    return specs


def _secret_problems(options: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    return [
        (f"{prefix}.{key}", "secrets do not belong in recipes; set it in the environment "
         "(the plugin's docs name the variable, like OPENAI_API_KEY)")
        for key, value in options.items()
        if SECRET_KEY.search(str(key)) and value not in (None, "")
    ]


def _format_error(err: dict[str, Any], model: type[BaseModel]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    # pydantic reports union branches and tagged types in the location; keep the data path
    path = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_fields(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else (
            f" (known: {', '.join(known)})" if known else "")
        return path, f"unknown key{hint}"
    if kind == "missing":
        return path, "required"
    msg = err["msg"]
    if "input" in err and kind not in ("missing",):
        value = err["input"]
        if not isinstance(value, (dict, list)):
            msg += f", got {value!r}"
    return path, msg


def _known_fields(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names valid at `loc` within `model`, following nested models and lists."""
    import typing

    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation, typing)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any, typing: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg, typing)
        if found is not None:
            return found
    return None
