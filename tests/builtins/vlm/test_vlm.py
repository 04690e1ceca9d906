"""The `vlm` filter over the real `openai` and `ollama` clients, against the local server,
which scores a pair from the two images it receives."""

import json
import shutil

import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from editkit.builtins.ollama import IMAGE_TOKENS
from editkit.builtins.vlm import VLMFilter, score_schema
from editkit.errors import ModelError, NeedsKeyError, RecipeError, RunError
from editkit.plugin.kinds import FilterJob
from editkit.run.folder import RecordStore, read_dataset
from editkit.run.recipe import load_recipe
from editkit.run.runner import run_recipe
from editkit.testing.llmserver import LLMServer, request_images
from editkit.testing.pairs import synthetic_pairs

FAST = {"backoff": 0.01, "max_backoff": 0.05}


def edit_pairs(folder, kinds, size=64):
    """One pair per kind: "good" (a region recoloured), "same" (after is before), "flat"
    (after is one grey)."""
    pairs = synthetic_pairs(folder, len(kinds), samples=1, size=size)
    for pair, kind in zip(pairs, kinds):
        if kind == "same":
            shutil.copy(pair["before_path"], pair["after_path"])
        elif kind == "flat":
            Image.new("RGB", (size, size), (128, 128, 128)).save(pair["after_path"])
    return pairs


def server_options(server, backend):
    return {"backend": backend, **({"base_url": server.url + "/v1"} if backend == "openai"
                                   else {"host": server.url})}


def make(server, backend="openai", **options):
    return VLMFilter(VLMFilter.Options(**server_options(server, backend), **FAST, **options))


def score(flt, pairs, cache_dir=None):
    job = FilterJob(pairs=pairs, cache_dir=cache_dir)
    return list(flt.score(job)), job.stats


@pytest.mark.parametrize("backend", ["openai", "ollama"])
def test_unchanged_rejected_good_kept_flat_rejected(tmp_path, server, backend):
    pairs = edit_pairs(tmp_path, ["same", "good", "flat"])
    results, stats = score(make(server, backend), pairs)
    same, good, flat = results
    assert [r["id"] for r in results] == [p["id"] for p in pairs]
    assert (same["keep"], good["keep"], flat["keep"]) == (False, True, False)
    assert same["criterion"] == "min_instruction"
    assert same["reason"] == ('vlm instruction 1 < min_instruction 6: "after is the before '
                              'image unchanged"')
    assert good["reason"] is None and good["criterion"] is None
    assert good["scores"] == {"vlm_instruction": 8, "vlm_preserved": 9, "vlm_quality": 8}
    assert "vlm quality 1 < min_quality 6" in flat["reason"]
    assert "one flat colour (128, 128, 128)" in flat["reason"]
    assert stats["requests"] == 3 and stats["pairs_asked"] == 3 and stats["pairs_cached"] == 0


def test_the_openai_request_carries_both_images_and_the_instruction(tmp_path, server):
    pairs = edit_pairs(tmp_path, ["good"], size=160)
    score(make(server, max_side=80, temperature=0.5), pairs)
    (call,) = server.chat_requests()
    body = call["body"]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.5
    assert body["response_format"]["json_schema"] == {
        "name": "pair_scores", "strict": True, "schema": score_schema()}
    user = body["messages"][-1]
    text = [part["text"] for part in user["content"] if part["type"] == "text"]
    assert json.dumps(pairs[0]["edit"]) in text[0]
    before, after = request_images(body["messages"])
    assert before.size == after.size == (80, 80)  # scaled to max_side
    assert before.tobytes() == Image.open(pairs[0]["before_path"]).resize((80, 80)).tobytes()


def test_the_ollama_request_sizes_its_context_for_two_images(tmp_path, server):
    pairs = edit_pairs(tmp_path, ["good"])
    score(make(server, "ollama", model="llama3.2-vision:latest"), pairs)
    (call,) = server.chat_requests()
    body = call["body"]
    assert body["format"] == score_schema()
    assert len(body["messages"][-1]["images"]) == 2
    assert body["options"]["num_ctx"] >= 2 * IMAGE_TOKENS + body["options"]["num_predict"]
    assert body["options"]["temperature"] == 0.0


def test_thresholds_decide_and_one_reason_names_every_failing_score(tmp_path, server):
    pairs = edit_pairs(tmp_path, ["good", "flat"])
    (good, flat), _ = score(make(server, min_instruction=9, min_quality=1), pairs)
    assert good["keep"] is False and good["criterion"] == "min_instruction"
    assert good["reason"].startswith("vlm instruction 8 < min_instruction 9: ")
    assert flat["criterion"] == "min_instruction"
    assert "vlm instruction 8 < min_instruction 9; vlm preserved" in flat["reason"]
    assert "quality" not in flat["reason"].split(":")[0]  # min_quality 1 is off


def test_unreadable_images_are_rejects_without_a_request(tmp_path, server):
    pairs = edit_pairs(tmp_path, ["good", "good", "good"])
    with open(pairs[0]["after_path"], "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n not really")
    pairs[1]["before_path"] = str(tmp_path / "gone.png")
    results, _ = score(make(server), pairs)
    assert [r["keep"] for r in results] == [False, False, True]
    assert results[0]["criterion"] == "unreadable image"
    assert results[0]["reason"].startswith("unreadable image (after): cannot decode image")
    assert results[1]["reason"].startswith("unreadable image (before): cannot read image")
    assert len(server.chat_requests()) == 1


def test_ollama_faults_are_retried_or_become_rejects(tmp_path):
    pairs = edit_pairs(tmp_path, ["good"] * 4)
    faults = ["500", "429", "ok", "malformed", "truncated", "500", "500", "500"]
    with LLMServer(faults=faults) as server:
        results, stats = score(make(server, "ollama", concurrency=1, max_retries=2), pairs)
    assert results[0]["reason"] is None  # answered at the third try
    assert results[1]["reason"] == ("vlm: no score: malformed JSON (Expecting value at 15: "
                                    '{"triplets": [ oops)')
    assert results[3]["reason"] == ("vlm: no score: request failed (500: llama runner process "
                                    "has terminated (after 2 retries))")
    assert results[2]["reason"].startswith("vlm: no score: truncated reply (the reply hit the "
                                           "token limit; raise max_tokens")
    assert results[2]["criterion"] == "no score: truncated reply"
    assert stats["retries"] == 4 and stats["failed_requests"] == 1


def recipe(tmp_path, options):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "v", "output": str(tmp_path / "run"), "seed": 0,
        "captions": {"use": "template", "count": 4},
        "render": {"use": "prompt-to-prompt", "options": {"model": "tiny-sd"}},
        "filters": [{"use": "vlm", "options": {**FAST, **options}}]}))
    return path


def rendered_run(tmp_path, kinds):
    """A run folder whose render stage left these pairs (drawn, not rendered)."""
    images = tmp_path / "run" / "render" / "images"
    pairs = edit_pairs(images, kinds)
    RecordStore(tmp_path / "run" / "render").append([
        {**{k: p[k] for k in ("id", "triplet_id", "sample", "input", "edit", "output",
                              "settings")},
         "before": f"images/{p['id']}-before.png", "after": f"images/{p['id']}-after.png",
         "status": "kept"} for p in pairs])
    return pairs


def filter_stage(tmp_path, options, fresh=False):
    summary = run_recipe(load_recipe(recipe(tmp_path, options)), only="filters", fresh=fresh,
                         progress=False)["filters"]
    return summary, {r["id"]: r for r in RecordStore(tmp_path / "run/filters/0-vlm").read()}


def test_the_stage_records_scores_and_a_rerun_asks_nothing_again(tmp_path, server):
    rendered_run(tmp_path, ["same", "good", "flat", "good"])
    options = {"base_url": server.url + "/v1"}
    summary, records = filter_stage(tmp_path, options)
    assert summary["scored"] == 4 and summary["kept"] == 2
    assert summary["rejects"] == {"vlm: min_instruction": 1, "vlm: min_preserved": 1}
    assert summary["stats"]["0-vlm"]["pairs_asked"] == 4
    assert summary["stats"]["0-vlm"]["requests"] == 4
    assert all(set(r["scores"]) == {"vlm_instruction", "vlm_preserved", "vlm_quality"}
               for r in records.values())
    rows = read_dataset(tmp_path / "run").rows
    assert sorted(r["id"] for r in rows) == ["000001-0", "000003-0"]
    assert rows[0]["scores"]["vlm_quality"] == 8
    asked = len(server.chat_requests())

    # the stage again (its records stand), then redone with new thresholds and back: every
    # score from the cache, even with the server gone (it is never connected to)
    filter_stage(tmp_path, options)
    server.stop()
    stricter, _ = filter_stage(tmp_path, {**options, "min_instruction": 9}, fresh=True)
    assert stricter["kept"] == 0 and stricter["stats"]["0-vlm"]["pairs_cached"] == 4
    again, records_again = filter_stage(tmp_path, options, fresh=True)
    assert again["stats"]["0-vlm"]["pairs_cached"] == 4
    assert again["stats"]["0-vlm"]["pairs_asked"] == 0
    assert records_again == records
    assert len(server.chat_requests()) == asked


def test_another_model_or_guidance_asks_again(tmp_path, server):
    rendered_run(tmp_path, ["good", "good"])
    options = {"base_url": server.url + "/v1"}
    filter_stage(tmp_path, options)
    filter_stage(tmp_path, {**options, "model": "gpt-4.1-mini"}, fresh=True)
    assert len(server.chat_requests()) == 4
    filter_stage(tmp_path, {**options, "guidance": "a change of light counts as kept"},
                 fresh=True)
    calls = server.chat_requests()
    assert len(calls) == 6
    assert calls[-1]["body"]["messages"][0]["content"].endswith(
        "Also: a change of light counts as kept")


def test_faults_become_rejects_with_reasons_and_the_stage_finishes(tmp_path):
    rendered_run(tmp_path, ["good"] * 6)
    faults = ["refusal", "malformed", "truncated", "500", "500", "nochoices", "429"]
    with LLMServer(faults=faults) as server:
        options = {"base_url": server.url + "/v1", "concurrency": 1, "max_retries": 1}
        summary, records = filter_stage(tmp_path, options)
        reasons = [records[f"00000{i}-0"]["reason"] for i in range(6)]
        assert reasons[0] == "vlm: no score: refused (I'm sorry, I can't help with that.)"
        assert reasons[1].startswith("vlm: no score: malformed JSON (")
        assert reasons[2].startswith("vlm: no score: truncated reply (")
        assert reasons[3] == ("vlm: no score: request failed (500 server_error The server had "
                              "an error (after 1 retries))")
        assert reasons[4].startswith("vlm: no score: request failed (unusable response: ")
        assert reasons[5] is None  # a 429 with Retry-After, then answered
        assert summary["kept"] == 1
        assert summary["rejects"] == {"vlm: no score: refused": 1,
                                      "vlm: no score: malformed JSON": 1,
                                      "vlm: no score: truncated reply": 1,
                                      "vlm: no score: request failed": 2}
        assert summary["stats"]["0-vlm"]["retries"] == 2
        # nothing failed is cached: redone, the stage asks those five again, and only those
        asked = len(server.chat_requests())
        again, records = filter_stage(tmp_path, {**options, "max_retries": 2}, fresh=True)
        assert len(server.chat_requests()) == asked + 5
        assert again["kept"] == 6 and again["stats"]["0-vlm"]["pairs_cached"] == 1


def test_requests_failing_in_a_row_stop_the_stage(tmp_path):
    rendered_run(tmp_path, ["good"] * 4)
    with LLMServer(faults=["ok"] + ["500"] * 3) as server:
        options = {"base_url": server.url + "/v1", "concurrency": 1, "max_retries": 0,
                   "max_failed_requests": 3}
        with pytest.raises(RunError, match=r"vlm: 3 requests in a row failed after 0 retries "
                           r"each \(last: 500 server_error"):
            filter_stage(tmp_path, options)
        # running again: the pair scored before the stop comes from the cache
        summary, _ = filter_stage(tmp_path, options)
    assert summary["kept"] == 4 and summary["stats"]["0-vlm"]["pairs_cached"] == 1


def test_fatal_errors_stop_with_the_caption_plugins_errors(tmp_path, monkeypatch):
    rendered_run(tmp_path, ["good"] * 2)
    with LLMServer(faults=["401"]) as server:
        with pytest.raises(NeedsKeyError, match="refused the API key"):
            filter_stage(tmp_path, {"base_url": server.url + "/v1"})
    with LLMServer(faults=["404"]) as server:
        with pytest.raises(ModelError, match="model 'gpt-5-vision' is not available") as info:
            filter_stage(tmp_path, {"base_url": server.url + "/v1", "model": "gpt-5-vision"},
                         fresh=True)
        assert "check filters[vlm].options.model" in str(info.value)
        with pytest.raises(ModelError, match=r"run `ollama pull llava`"):
            filter_stage(tmp_path, {"backend": "ollama", "host": server.url, "model": "llava"},
                         fresh=True)
    with pytest.raises(RunError, match="cannot connect to http://127.0.0.1:9/v1") as info:
        filter_stage(tmp_path, {"base_url": "http://127.0.0.1:9/v1"}, fresh=True)
    assert "filters[vlm].options.base_url" in str(info.value)
    with pytest.raises(RunError, match="ollama: no server answers at http://127.0.0.1:9"):
        filter_stage(tmp_path, {"backend": "ollama", "host": "http://127.0.0.1:9"}, fresh=True)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(NeedsKeyError, match="OPENAI_API_KEY is not set"):
        filter_stage(tmp_path, {"model": "gpt-4o"}, fresh=True)


@pytest.mark.parametrize("options, error", [
    ({"min_quality": 0}, "min_quality"),
    ({"min_instruction": 11}, "min_instruction"),
    ({"backend": "gemini"}, "backend"),
    ({"host": "http://127.0.0.1:11434"}, "host is for backend ollama"),
    ({"backend": "ollama", "base_url": "http://x/v1"}, "base_url is for backend openai"),
    ({"min_scor": 5}, "min_scor"),
])
def test_options_are_checked(options, error):
    with pytest.raises(ValidationError, match=error):
        VLMFilter.Options(**options)


def test_a_recipe_with_a_bad_threshold_is_refused_at_load(tmp_path):
    with pytest.raises(RecipeError, match=r"filters\.0\.options\.min_preserved"):
        load_recipe(recipe(tmp_path, {"min_preserved": 12}))
