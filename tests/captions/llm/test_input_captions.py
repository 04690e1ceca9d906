"""`input_captions`: the LLM writes only the edit and output of captions it is given."""

import json

import pytest
from llm_helpers import recipe_file, records, run

from editkit.captions.files import read_captions
from editkit.errors import InputError, RecipeError, RunError
from editkit.run.recipe import load_recipe
from editkit.testing.llmserver import LLMServer

FAST = {"backoff": 0.01, "max_backoff": 0.05}
CAPTIONS = [f"A quiet street number {k} with parked cars." for k in range(12)]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def caption_file(tmp_path, captions=CAPTIONS):
    path = tmp_path / "captions.txt"
    path.write_text("".join(c + "\n" for c in captions))
    return path


def options(use, server, captions, **extra):
    where = {"base_url": server.url + "/v1"} if use == "openai" else {"host": server.url}
    return {**where, "input_captions": str(captions), "domain_pack": "streetview",
            "per_request": 3, "concurrency": 1, **FAST, **extra}


def kept(tmp_path):
    return [r for r in records(tmp_path) if r["status"] == "kept"]


def sent(server):
    """The captions each chat request gave, request by request."""
    return [[json.loads(line) for line in call["body"]["messages"][-1]["content"].splitlines()
             if line.startswith('"')] for call in server.chat_requests()]


@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_given_captions_stay_verbatim_and_a_rerun_continues_at_the_next_unused(tmp_path, use):
    captions = caption_file(tmp_path)
    with LLMServer() as server:
        run(recipe_file(tmp_path, use, 5, options(use, server, captions)))
        first = kept(tmp_path)
        assert [r["input"] for r in first] == CAPTIONS[:5]  # verbatim, in order
        assert [r["input_index"] for r in first] == [0, 1, 2, 3, 4]
        assert all(r["output"].endswith("with a red bicycle in front") for r in first)
        assert sent(server) == [CAPTIONS[0:3], CAPTIONS[3:6]]
        body = server.chat_requests()[0]["body"]["messages"][-1]["content"]
        assert "copied exactly as given" in body and '{"input"' in body  # few-shot examples

        run(recipe_file(tmp_path, use, 9, options(use, server, captions)))
        # caption 5 came back in the first run but was not needed: it is the next unused
        assert sent(server)[2:] == [CAPTIONS[5:8], CAPTIONS[8:11]]
        assert [r["input"] for r in kept(tmp_path)] == CAPTIONS[:9]

        with pytest.raises(RunError, match="the 12 captions in .* have all been sent, and "
                           "8 more triplets are needed") as info:
            run(recipe_file(tmp_path, use, 20, options(use, server, captions)))
        assert "add captions to input_captions or lower captions.count" in info.value.hint
    assert [r["input"] for r in kept(tmp_path)] == CAPTIONS  # every caption once, none lost


def test_rewritten_and_skipped_inputs_are_rejects_and_case_is_forgiven(tmp_path):
    captions = caption_file(tmp_path)
    with LLMServer(faults=["rewrite", "skip", "recase"]) as server:
        summary = run(recipe_file(tmp_path, "openai", 7, options("openai", server,
                                                                 captions)))["captions"]
    recs = records(tmp_path)
    assert summary["rejects"] == {"input rewritten": 1, "input skipped": 1}
    rewritten = next(r for r in recs if r.get("reason") == "input rewritten")
    assert rewritten["input_index"] == 0 and rewritten["input"].startswith("a nicer version")
    assert CAPTIONS[0] in rewritten["detail"]
    skipped = next(r for r in recs if r.get("reason") == "input skipped")
    assert skipped["input_index"] == 5 and skipped["input"] == CAPTIONS[5]
    good = kept(tmp_path)
    # the upper-cased copies of captions 6-8 matched, and the records keep the given text
    assert [r["input_index"] for r in good] == [1, 2, 3, 4, 6, 7, 8]
    assert all(r["input"] == CAPTIONS[r["input_index"]] for r in good)


def test_captions_of_a_failed_request_are_sent_again_on_resume(tmp_path):
    captions = caption_file(tmp_path)
    with LLMServer(faults=["500", "malformed"]) as server:
        opts = options("openai", server, captions, max_retries=0, max_failed_requests=3)
        run(recipe_file(tmp_path, "openai", 3, opts))
        recs = records(tmp_path)
        assert [(r["reason"], r["input_indices"]) for r in recs[:2]] == [
            ("request failed", [0, 1, 2]), ("malformed JSON", [3, 4, 5])]
        before = len(sent(server))
        run(recipe_file(tmp_path, "openai", 6, opts))
        # the failed request's captions are the first unused; the malformed reply used its
        assert sent(server)[before:] == [CAPTIONS[0:3]]
    assert [r["input_index"] for r in kept(tmp_path)] == [6, 7, 8, 0, 1, 2]


def test_caption_files_read_text_jsonl_json_csv_and_a_saved_dataset_folder(tmp_path):
    (tmp_path / "a.txt").write_text("a red car\n\n  a blue door  \n")
    assert read_captions(tmp_path / "a.txt") == ["a red car", "a blue door"]
    (tmp_path / "b.jsonl").write_text('{"id": 1, "caption": "a red car"}\n\n'
                                      '{"id": 2, "Caption": "a street"}\n')
    assert read_captions(tmp_path / "b.jsonl") == ["a red car", "a street"]
    (tmp_path / "c.json").write_text(json.dumps([{"input": "a bench"}, "a lamp"]))
    assert read_captions(tmp_path / "c.json") == ["a bench", "a lamp"]
    (tmp_path / "d.csv").write_text('url,TEXT\nhttp://x/1.jpg,"a café, at night"\n')
    assert read_captions(tmp_path / "d.csv") == ["a café, at night"]
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "laion"
    folder.mkdir()
    data = datasets.Dataset.from_dict({"url": ["u1", "u2", "u3"],
                                       "caption": ["a dog on a sofa", "a kitchen", "a bridge"]})
    data.select([0, 1]).to_json(folder / "part-0.jsonl")
    data.select([2]).to_json(folder / "part-1.jsonl")
    assert read_captions(folder) == ["a dog on a sofa", "a kitchen", "a bridge"]
    data.save_to_disk(tmp_path / "arrow")
    with pytest.raises(InputError, match="save_to_disk"):
        read_captions(tmp_path / "arrow")


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.txt", "no such file or folder"),
    (lambda d: (d / "empty.txt").write_text("\n\n") and d / "empty.txt", "it holds no captions"),
    (lambda d: (d / "x.jsonl").write_text('{"url": "u"}\n') and d / "x.jsonl",
     "no caption, input or text field"),
])
def test_validation_refuses_a_missing_or_empty_file_in_one_line(tmp_path, make, message):
    path = make(tmp_path)
    recipe = recipe_file(tmp_path, "ollama", 5, {"input_captions": str(path)})
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    (problem,) = info.value.problems
    assert problem[0] == "captions.options.input_captions"
    assert message in problem[1] and "\n" not in problem[1]


def test_cli_refuses_an_empty_caption_file_before_any_request(cli, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    recipe = recipe_file(tmp_path, "openai", 5, {"input_captions": "empty.txt",
                                                 "base_url": "http://127.0.0.1:9/v1"})
    result = cli("run", recipe, OPENAI_API_KEY="sk-test")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "captions.options.input_captions: it holds no captions" in result.stderr
