"""The `editkit` command. Only this module turns errors into exit codes and messages.

Start-up stays light: torch and the model libraries are imported by the commands that use them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from editkit import __version__
from editkit.editing import DEFAULT_GUIDANCE
from editkit.errors import EditkitError
from editkit.models.editors import DEFAULT_EDIT_MODEL
from editkit.models.segmenter import DEFAULT_SEGMENTER, REGIONS
from editkit.run.recipe import STAGES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="editkit")
def cli() -> None:
    """Make instruction-following image editors for your domain.

    A recipe picks a plugin for each stage: captions -> render -> filters -> train.
    """


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins and the model folders they ship: name, kind, package, version."""
    from editkit.plugin.registry import registry

    reg = registry()
    rows = [{"name": p.name, "kind": p.kind, "package": p.package,
             "distribution": p.distribution, "version": p.version, "builtin": p.builtin}
            for p in sorted(reg.plugins.values(), key=lambda p: (p.kind, p.name))]
    rows += [{"name": m.name, "kind": "model", "package": m.package,
              "distribution": m.distribution, "version": m.version, "builtin": m.builtin,
              "folder": m.folder} for m in sorted(reg.models.values(), key=lambda m: m.name)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        header = ("NAME", "KIND", "PACKAGE", "VERSION")
        table = [header] + [(r["name"], r["kind"], r["package"] if r["builtin"]
                             else r["distribution"], r["version"]) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    reg.check_conflicts()


@cli.group(name="recipes")
def recipes_group() -> None:
    """List the built-in recipes, copy one out to edit, check a recipe."""


@recipes_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def recipes_list_command(as_json: bool) -> None:
    """List the built-in recipes (what each makes and needs) and domain packs."""
    from editkit.captions.packs import builtin_pack_names, find_pack
    from editkit.run.builtin_recipes import builtin_recipes

    recipes = builtin_recipes()
    packs = {name: find_pack(name) for name in builtin_pack_names()}
    if as_json:
        click.echo(json.dumps({
            "recipes": [{"name": r.name, "description": r.description, "needs": r.needs,
                         "path": str(r.path)} for r in recipes],
            "domain_packs": [{"name": name, "path": str(path)} for name, path in packs.items()],
        }, indent=2))
        return
    import shutil
    import textwrap

    width = max([len("RECIPE")] + [len(r.name) for r in recipes])
    columns = min(100, shutil.get_terminal_size().columns)
    indent = " " * (width + 2)
    click.echo(f"{'RECIPE'.ljust(width)}  DESCRIPTION / NEEDS")
    for r in recipes:
        for first, text in ((r.name.ljust(width) + "  ", r.description),
                            (indent, f"needs: {r.needs or '-'}")):
            click.echo(textwrap.fill(text, max(columns, width + 40), initial_indent=first,
                                     subsequent_indent=indent, break_on_hyphens=False))
    click.echo(f"\ndomain packs (captions.options.domain_pack): {', '.join(packs) or 'none'}")
    click.echo("run one: editkit run NAME    copy one to edit: editkit recipes copy NAME")


@recipes_group.command(name="copy")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite files that are already there.")
def recipes_copy_command(name: str, dest: str | None, force: bool) -> None:
    """Copy built-in recipe NAME to DEST (default ./NAME.yaml) to edit, with the sample
    inputs it names (under ./recipes/data/, where its paths point from here)."""
    from editkit.run.builtin_recipes import copy_recipe

    written = copy_recipe(name, dest, force=force)
    for path in written:
        click.echo(str(path))
    click.echo(f"run it: editkit run {written[0]}", err=True)


@recipes_group.command(name="validate")
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate_command(recipe_file: str, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE_FILE or a built-in recipe's name (with optional key.path=value
    overrides) and print it resolved."""
    from editkit.run.recipe import load_recipe

    recipe = load_recipe(recipe_file, list(overrides))
    _print_resolved(recipe)
    click.echo(f"{recipe_file}: ok ({', '.join(recipe.stages())})", err=True)


def _print_resolved(recipe: Any) -> None:
    import yaml

    click.echo(yaml.safe_dump(recipe.resolved(), sort_keys=False).rstrip())


@cli.command(name="run")
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True,
              help="Validate and print the resolved recipe; run nothing.")
@click.option("--fresh", is_flag=True,
              help="Discard the stages the changed recipe invalidates (all, if none) and "
                   "redo them.")
@click.option("--only", type=click.Choice(STAGES), help="Run just this stage.")
def run_command(recipe_file: str, overrides: tuple[str, ...], dry_run: bool, fresh: bool,
                only: str | None) -> None:
    """Run RECIPE_FILE, resuming whatever its run folder already holds.

    Overrides like render.options.steps=30 win over the file (values parse as YAML).
    """
    from editkit.run.recipe import load_recipe

    recipe = load_recipe(recipe_file, list(overrides))
    if dry_run:
        _print_resolved(recipe)
        return
    from editkit.run.runner import run_recipe

    summaries = run_recipe(recipe, fresh=fresh, only=only)
    if os.environ.get("RANK", "0") != "0":
        return  # under accelerate launch the main process reports
    from editkit.console import print_evaluation, print_summary

    print_summary(summaries)
    if summaries.get("evaluate", {}).get("models"):
        click.echo()
        print_evaluation(summaries["evaluate"])
    judged = recipe.output / "evaluate" / "judge.md"
    if "judge" in summaries.get("evaluate", {}) and judged.is_file():
        click.echo(judged.read_text("utf-8").rstrip())
    click.echo(f"run folder: {recipe.output}")


class Number(click.ParamType):
    """A finite float at or above `low`: click's float and FloatRange let nan and inf in."""

    name = "number"

    def __init__(self, low: float | None = 0.0):
        self.low = low

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and number < self.low:
            self.fail(f"{value!r} is below {self.low:g}", param, ctx)
        return number


def _model_reference(ctx: Any, param: Any, value: str | None) -> str | None:
    """A model option: refused now when it cannot work (a path that does not exist, a
    family editkit does not support, a text-to-image model given as the editor), not after
    the inputs are read and torch loads. --base (a LoRA's) may be either kind; --segmenter
    is checked as a reference only."""
    if value is None:
        return value
    from editkit.models import reference_problem

    role = {"base": "edit", "segmenter": None, "clip_model": None}.get(param.name, "editor")
    problem = reference_problem(value, role)
    if problem:
        raise click.BadParameter(problem, ctx=ctx, param=param)
    return value


def _model_references(ctx: Any, param: Any, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        _model_reference(ctx, param, value)
    return values


def _dtype(ctx: Any, param: Any, value: str) -> str:
    names = ("auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16")
    if value not in names:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(names)}", ctx=ctx,
                                 param=param)
    return value


def _device(ctx: Any, param: Any, value: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise click.BadParameter(f"{value!r} is not auto, cpu, cuda, cuda:N or mps", ctx=ctx,
                                 param=param)
    return value


GUIDANCE_HELP = ("[default: the model's recommendation (a trained editor's "
                 "editkit_weights.json), else InstructPix2Pix's {}]")


@cli.command(name="edit", context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, required=True, metavar="IMAGE... INSTRUCTION")
@click.option("--model", default=DEFAULT_EDIT_MODEL, show_default=True,
              callback=_model_reference,
              help="Hub id, local diffusers folder, run folder, or LoRA .safetensors file.")
@click.option("--base", default=None, callback=_model_reference,
              help="Base model for a LoRA file (default: its own).")
@click.option("--steps", default=None, type=click.IntRange(1, 1000),
              help="Denoising steps  [default: the editor's recommendation, else its "
                   "family's: 20 for InstructPix2Pix, 28 FLUX.1 Kontext, 4 FLUX.2 klein, 40 "
                   "Qwen-Image-Edit]")
@click.option("--guidance", default=None, type=Number(),
              help="Text guidance scale  " + GUIDANCE_HELP.format(DEFAULT_GUIDANCE["text"]))
@click.option("--image-guidance", default=None, type=Number(),
              help="How closely to keep the input image  "
                   + GUIDANCE_HELP.format(DEFAULT_GUIDANCE["image"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--variations", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Results per image (seeds seed..seed+N-1), saved each and as a grid.")
@click.option("--size", default=None, type=click.IntRange(32, 4096),
              help="Long side the model works at; the aspect ratio is kept  [default: the "
                   "model's own resolution: 512 for Stable Diffusion, 64 for shapes-edit]")
@click.option("--output-size", type=click.Choice(["input", "model"]), default="input",
              show_default=True, help="Return results at the input's size or the model's.")
@click.option("--mask", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Edit only where this mask is white; elsewhere keep the original.")
@click.option("--feather", default=4.0, show_default=True, type=Number(),
              help="Soften the mask edge by this many pixels.")
@click.option("--localize", is_flag=True, help="Find the mask from the model's attention to "
              "the instruction's words; saved as <stem>-mask.png beside the result.")
@click.option("--localize-words", default=None, metavar="W1,W2",
              help="Words to localize (comma-separated) [the instruction's content words].")
@click.option("--localize-threshold", default="otsu", show_default=True,
              help="Cut of the normalised attention map, 0-1, or 'otsu' (per image).")
@click.option("--mask-words", default=None, metavar="W1,W2",
              help="Edit only where the segmenter finds these things in each image "
                   "(comma-separated, united); the mask is saved as <stem>-mask.png beside "
                   "the result.")
@click.option("--region", type=click.Choice(REGIONS), default=None,
              help="Edit only the foreground (the --mask-words, else any object) or the "
                   "background (everything else) the segmenter finds in each image.")
@click.option("--mask-threshold", default="0.5", show_default=True,
              help="Cut of the segmenter's map for --mask-words / --region, 0-1, or 'otsu' "
                   "(per image); lower gives a larger mask.")
@click.option("--segmenter", default=DEFAULT_SEGMENTER, show_default=True,
              callback=_model_reference,
              help="CLIPSeg model for --mask-words / --region: hub id or local folder.")
@click.option("--best-of", default=None, type=click.IntRange(2, 64), metavar="N",
              help="Make N candidates per image (seeds seed..seed+N-1 and guidance around "
                   "the chosen values), write the one --judge scores best, every candidate's "
                   "settings and scores in its PNG and <stem>.best-of.json; with "
                   "--variations N every candidate is saved too.")
@click.option("--judge", default="clip", show_default=True, metavar="NAME",
              help="What scores --best-of's candidates: clip (CLIP gain toward the "
                   "instruction + image similarity), vlm (a vision model's 1-10 scores, "
                   "summed), or a judge plugin that reads the edit from the image (shapes).")
@click.option("--clip-model", default=None, callback=_model_reference,
              help="CLIP model of --judge clip: hub id, local folder or built-in "
                   "[openai/clip-vit-large-patch14].")
@click.option("--judge-backend", type=click.Choice(["openai", "ollama"]), default="openai",
              show_default=True, help="API of --judge vlm: openai (OPENAI_API_KEY; any "
              "server speaking it) or ollama.")
@click.option("--judge-model", default=None, help="Vision model of --judge vlm [gpt-4o-mini "
              "for openai, llama3.2-vision for ollama].")
@click.option("--judge-url", default=None, help="Server of --judge vlm: an OpenAI-compatible "
              "base URL [OPENAI_BASE_URL, else api.openai.com] or the Ollama host "
              "[OLLAMA_HOST, else http://127.0.0.1:11434].")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--out", default=None, help="Output image file (one result: .png, .jpg, "
              ".webp, ...) or folder [edits/].")
@click.option("--device", default="auto", show_default=True, callback=_device)
@click.option("--dtype", default="auto", show_default=True, callback=_dtype)
def edit_command(args: tuple[str, ...], model: str, base: str | None, steps: int,
                 guidance: float | None, image_guidance: float | None, seed: int,
                 variations: int, size: int | None,
                 output_size: str, mask: str | None, feather: float, localize: bool,
                 localize_words: str | None, localize_threshold: str, mask_words: str | None,
                 region: str | None, mask_threshold: str, segmenter: str, best_of: int | None,
                 judge: str, clip_model: str | None, judge_backend: str,
                 judge_model: str | None, judge_url: str | None, batch_size: int,
                 out: str | None, device: str, dtype: str) -> None:
    """Edit IMAGE... (files or folders) by INSTRUCTION, e.g. "remove the cars"."""
    if len(args) < 2:
        raise click.UsageError('give at least one image and an instruction: '
                               'editkit edit photo.png "remove the cars"')
    if not args[-1].strip():
        raise click.BadParameter('the instruction is empty; say what to change, like '
                                 '"remove the cars"', param_hint="INSTRUCTION")
    if localize and mask:
        raise click.UsageError("--localize finds the mask itself; give --localize or --mask, "
                               "not both")
    if not localize and (localize_words or localize_threshold != "otsu"):
        raise click.UsageError("--localize-words and --localize-threshold need --localize")
    cut = _threshold(localize_threshold, "--localize-threshold")
    segment = mask_words is not None or region is not None
    if segment and mask:
        raise click.UsageError("--mask-words and --region find the mask themselves; give them "
                               "or --mask, not both")
    if segment and localize:
        raise click.UsageError("--localize and --mask-words / --region both find the mask; "
                               "give one of them")
    source = click.get_current_context().get_parameter_source
    if not segment and any(source(name) != click.core.ParameterSource.DEFAULT
                           for name in ("mask_threshold", "segmenter")):
        raise click.UsageError("--mask-threshold and --segmenter need --mask-words or --region")
    words = [w.strip() for w in mask_words.split(",") if w.strip()] if mask_words else []
    if mask_words is not None and not words:
        raise click.BadParameter(f"{mask_words!r} names nothing; give what the edit changes, "
                                 "like car,bus", param_hint="--mask-words")
    mask_cut = _threshold(mask_threshold, "--mask-threshold")
    judging = ("judge", "clip_model", "judge_backend", "judge_model", "judge_url")
    if best_of is None and any(source(name) != click.core.ParameterSource.DEFAULT
                               for name in judging):
        raise click.UsageError("--judge, --clip-model, --judge-backend, --judge-model and "
                               "--judge-url need --best-of")
    picking = None
    if best_of is not None:
        from editkit.evaluation.best_of import BestOf

        picking = BestOf(best_of, judge=judge.strip(), clip_model=clip_model,
                         judge_model=judge_model, judge_backend=judge_backend,
                         judge_url=judge_url)
    from editkit.editing import EditSettings, SkippedImages, run_edits

    settings = EditSettings(instruction=args[-1], steps=steps, guidance=guidance,
                            image_guidance=image_guidance, seed=seed, variations=variations,
                            size=size, output_size=output_size, batch_size=batch_size,
                            feather=feather, localize=localize,
                            localize_words=localize_words.split(",") if localize_words else None,
                            localize_threshold=cut, mask_words=words or None, region=region,
                            mask_threshold=mask_cut)
    try:
        written = run_edits(list(args[:-1]), settings, model, out, base=base, mask=mask,
                            device=device, dtype=dtype, segmenter=segmenter,
                            best_of=picking, say=lambda line: click.echo(line, err=True))
    except SkippedImages as exc:  # the others were edited: say where they went
        for path in exc.written:
            click.echo(str(path))
        raise
    for path in written:
        click.echo(str(path))


def _threshold(text: str, option: str) -> float | None:
    """'otsu' -> None (Otsu's threshold per image), else a number strictly between 0 and 1."""
    if text.strip().lower() == "otsu":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise click.BadParameter(f"{text!r} is neither 'otsu' nor a number between 0 and 1",
                                 param_hint=option)
    return value


@cli.command(name="eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "models", multiple=True, required=True, callback=_model_references,
              help="Edit model (repeatable): hub id, diffusers folder, run folder, LoRA file.")
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test",
              show_default=True, help="Which rows of a dataset with a split column.")
@click.option("--out", default=None, help="Folder for metrics.json, metrics.md and the edits "
              "[RUN/evaluate for a run folder, else eval/].")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1))
@click.option("--guidance", default=None, type=Number(),
              help="Text guidance scale  " + GUIDANCE_HELP.format(DEFAULT_GUIDANCE["text"]))
@click.option("--image-guidance", default=None, type=Number(),
              help="Image guidance scale  " + GUIDANCE_HELP.format(DEFAULT_GUIDANCE["image"]))
@click.option("--resolution", default=512, show_default=True, type=int,
              help="Inputs are resized to this square.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1),
              help="At most this many rows.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--clip-model", default=None, help="CLIP model [openai/clip-vit-large-patch14].")
@click.option("--dino-model", default=None, help="DINOv2 model [facebook/dinov2-base].")
@click.option("--device", default="auto", show_default=True, callback=_device)
def eval_command(dataset: str, models: tuple[str, ...], split: str, out: str | None,
                 **options: Any) -> None:
    """Measure edit models on DATASET (a run folder or a folder with metadata.jsonl):
    CLIP_im, CLIP_dir, CLIP_out, DINO, L1 (and L1 against the target where there is one)."""
    from pathlib import Path

    from pydantic import ValidationError

    from editkit.errors import InputError
    from editkit.evaluation.evaluate import (
        evaluate_models,
        load_rows,
        markdown_table,
        write_results,
    )
    from editkit.evaluation.settings import EvalSettings

    given = {k: v for k, v in options.items() if v is not None}
    try:
        settings = EvalSettings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}",
                         "see editkit eval --help") from None
    rows, source = load_rows(dataset, split, settings.limit)
    if not rows:
        raise InputError(f"{dataset} has no rows in split '{split}'",
                         "choose another --split (or --split all)")
    is_run = Path(source["dataset"]) == (Path(dataset) / "dataset").resolve()
    folder = Path(out) if out else (Path(dataset) / "evaluate" if is_run else Path("eval"))
    from editkit.run.outputs import folder_problem

    unwritable = folder_problem(folder, "--out" if out else "output folder")
    if unwritable:  # found now, not when the results are saved after every model has run
        raise InputError(unwritable)
    result = evaluate_models(list(models), rows, folder, settings, source)
    json_path, md_path = write_results(folder, result)
    click.echo(markdown_table(result).rstrip())
    click.echo(f"wrote {json_path} and {md_path}", err=True)


@cli.command(name="report")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=None, help="Folder for index.html and thumbnails [RUN/report].")
@click.option("--thumb-size", default=80, show_default=True,
              type=click.IntRange(16, 512),
              help="Longest side of each thumbnail image, in pixels.")
def report_command(run: str, out: str | None, thumb_size: int) -> None:
    """Write a static HTML report of RUN: pairs, captions, scores, rejects, statistics,
    evaluation and training samples, with thumbnails so thousands of pairs open fast."""
    from editkit.report import write_report

    page = write_report(run, out, thumb_size=thumb_size)
    click.echo(str(page))


def main(argv: list[str] | None = None) -> None:
    from editkit.console import quiet_libraries
    from editkit.plugin.registry import register_commands, registry

    quiet_libraries()
    debug = os.environ.get("EDITKIT_DEBUG", "") not in ("", "0")
    register_commands(cli)
    for line in registry().errors:
        click.echo(line, err=True)
    try:
        cli.main(args=argv, prog_name="editkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Interrupted: run the same command again to resume.", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line: what was wrong, the value, where help is
        where = f"; see {exc.ctx.command_path} -h" if exc.ctx is not None else ""
        click.echo(f"Error: {exc.format_message().rstrip('.')}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EditkitError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted: run the same command again to resume.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
