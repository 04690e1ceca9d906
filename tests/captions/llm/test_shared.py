"""What all LLM generators share: domain packs, parsing, diversity, the token check."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from llm_helpers import records, run

from editkit.captions.checks import check_triplet
from editkit.captions.diversity import diversity, mtld, yule_k
from editkit.captions.llm import Reply, parse_reply, retry_after, triplet_schema
from editkit.captions.packs import builtin_pack_names, load_pack
from editkit.captions.tokens import TokenLimit
from editkit.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
KINDS = {"add", "remove", "replace", "restyle", "season", "time_of_day", "weather"}


@pytest.mark.parametrize("name", ["streetview", "interior"])
def test_domain_packs_hold_good_examples_of_every_kind(name):
    pack = load_pack(name)
    assert len(pack.examples) >= 30 and "{domain}" in pack.system
    assert KINDS <= set(Counter(e["edit_kind"] for e in pack.examples))
    schema_fields = set(triplet_schema()["properties"]["triplets"]["items"]["properties"])
    for example in pack.examples:
        assert check_triplet(example) is None, example
        assert set(example) == schema_fields
        text = example["input"] if example["edit_kind"] == "remove" else example["output"]
        assert any(w.split("-")[0] in text.lower() for w in example["words"]), example
    assert len({e["input"] for e in pack.examples}) == len(pack.examples)


def test_unknown_pack_lists_the_built_ins():
    assert {"streetview", "interior"} <= set(builtin_pack_names())
    with pytest.raises(InputError, match="built-in packs: .*interior.*streetview"):
        load_pack("kitchens")


def test_replies_parse_into_triplets_or_one_reject_with_a_reason():
    good = Reply(json.dumps({"triplets": [{"input": "a", "edit": "b", "output": "c"}]}))
    assert parse_reply(good) == [{"input": "a", "edit": "b", "output": "c"}]
    loose = Reply(json.dumps({"triplets": [{"input": "a", "edit": "b", "output": "c",
                                            "id": "x", "status": "kept", "words": "red",
                                            "region": "background", "edit_kind": "melt"}]}))
    assert parse_reply(loose) == [{"input": "a", "edit": "b", "output": "c",
                                   "region": "background"}]
    cases = {"truncated reply": Reply('{"trip', finish="length"),
             "refused": Reply(None, refusal="no"), "malformed JSON": Reply("{nope"),
             "invalid schema": Reply('[1, 2]'), "empty reply": Reply('{"triplets": []}')}
    for reason, reply in cases.items():
        (reject,) = parse_reply(reply)
        assert reject.reason == reason


def test_retry_after_reads_seconds_milliseconds_and_dates():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({}) is None


def test_diversity_measures_on_known_texts():
    assert yule_k(["a", "b", "a", "b"]) == pytest.approx(2500.0)
    assert diversity(["a b", "a b"])["guiraud"] == pytest.approx(1.0)
    varied = "the quick brown fox jumps over a lazy dog near my old red barn".split()
    repeated = "the dog the dog the dog the dog the dog the dog the dog".split()
    assert mtld(varied) > mtld(repeated)
    assert yule_k(varied) < yule_k(repeated)


def test_token_check_counts_with_the_render_models_tokenizer(tmp_path):
    limit = TokenLimit("tiny-sd")
    short = {"input": "a red car", "edit": "make it blue", "output": "a blue car"}
    assert limit.problem(short) is None
    words = " ".join(["a zigzagging quixotic xylophone"] * 8)
    long = {**short, "output": words}
    reject = limit.problem(long)
    assert reject.reason == "too many tokens" and "output has" in reject.detail
    assert limit.count(words) > 77 > len(words.split())  # tokens, not words


def test_captions_stage_rejects_long_captions_and_reports_diversity(tmp_path):
    long_scene = "beside " + " ".join(["an old stone wall"] * 20)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: t
output: {tmp_path / 'run'}
captions:
  use: template
  count: 30
  tokenizer: tiny-sd
  options: {{scenes: ["{long_scene}", "in a park"], batch: 8}}
""")
    summary = run(recipe)["captions"]
    assert summary["kept"] == 30 and summary["rejects"]["too many tokens"] > 0
    assert summary["token_check"] == "tiny-sd tokenizer"
    assert all("stone wall" not in r["input"] for r in records(tmp_path)
               if r["status"] == "kept")
    for part in ("captions", "instructions"):
        stats = summary["diversity"][part]
        assert stats["tokens"] > 0 and stats["mtld"] > 0 and stats["yule_k"] > 0
    table = subprocess.run([sys.executable, "-m", "editkit.captions.diversity",
                            str(tmp_path / "run")],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split()[:4] == ["run", "generator", "model", "kept"]
    row = table[1].split()
    assert row[1] == "template" and row[3] == "30"
    assert row[5] == str(summary["diversity"]["captions"]["mtld"])


@pytest.mark.parametrize("name", ["streetview", "interior"])
def test_domain_recipes_validate_offline(cli, name):
    import torch

    recipe = ROOT / "recipes" / f"{name}.yaml"
    result = cli("recipes", "validate", recipe)
    if torch.cuda.is_available():
        assert result.returncode == 0, result.stderr
    else:  # the recipes train in fp16, which a machine without a GPU refuses up front
        assert result.returncode != 0
        assert "fp16 needs a GPU" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = cli("recipes", "validate", recipe, "train.options.mixed_precision=bf16")
    assert result.returncode == 0, result.stderr
    first = (ROOT / "recipes" / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# editkit run recipes/{name}.yaml")


def test_token_check_takes_the_render_model_unless_captions_names_one():
    from types import SimpleNamespace

    from editkit.captions.tokens import tokenizer_ref
    from editkit.plugin.kinds import PluginOptions
    from editkit.run.recipe import Recipe, RecipeModel, StagePlugin

    class RenderOptions(PluginOptions):
        model: str = "org/some-sd-model"

    def recipe(**captions):
        model = RecipeModel.model_validate({"name": "t", "output": "runs/t", "captions": {
            "use": "openai", **captions}, "render": {"use": "r"}})
        render = StagePlugin("render", SimpleNamespace(cls=None), RenderOptions())
        return Recipe(model=model, source="t", plugins={"render": render})

    assert tokenizer_ref(recipe()) == "org/some-sd-model"
    assert tokenizer_ref(recipe(tokenizer="tiny-sd")) == "tiny-sd"
