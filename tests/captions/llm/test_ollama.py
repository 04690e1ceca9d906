"""The real `ollama` client against a local server speaking /api/tags and /api/chat."""

import pytest
from llm_helpers import manifest, recipe_file, records, run

from editkit.builtins.ollama import context_size
from editkit.errors import ModelError, RunError
from editkit.testing.llmserver import LLMServer

FAST = {"backoff": 0.01, "max_backoff": 0.05}


def test_format_is_the_schema_and_lengths_are_sized_to_fit(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    path = recipe_file(tmp_path, "ollama", 18, {"domain_pack": "interior", "per_request": 6,
                                                "concurrency": 2, **FAST})
    summary = run(path)["captions"]
    assert summary["kept"] == 18
    calls = server.chat_requests()
    assert len(calls) == 3
    body = calls[0]["body"]
    assert body["format"]["properties"]["triplets"]["items"]["required"] == [
        "input", "edit", "output", "edit_kind", "words", "region"]
    assert body["model"] == "llama3.2" and body["stream"] is False
    prompt_chars = sum(len(m["content"]) for m in body["messages"])
    options = body["options"]
    assert options["num_predict"] >= 6 * 60
    assert options["num_ctx"] >= prompt_chars // 3 + options["num_predict"]
    assert "interior design" in body["messages"][0]["content"]
    llm = manifest(tmp_path)["stages"]["captions"]["stats"]["llm"]
    assert llm["requests"] == 3 and llm["completion_tokens"] == 750 and llm["host"] == server.url


def test_faults_retry_or_become_rejects(tmp_path):
    with LLMServer(faults=["500", "429", "malformed", "truncated", "slow"], slow=3.0) as server:
        path = recipe_file(tmp_path, "ollama", 8, {"host": server.url, "per_request": 4,
                                                   "concurrency": 1, "timeout": 1.0, **FAST})
        run(path)
    recs = records(tmp_path)
    assert sorted(r["reason"] for r in recs if r["status"] == "rejected") == [
        "malformed JSON", "truncated reply"]
    assert sum(r["status"] == "kept" for r in recs) == 8
    assert manifest(tmp_path)["stages"]["captions"]["stats"]["llm"]["retries"] == 3


def test_a_missing_model_names_the_pull_command(tmp_path, server):
    path = recipe_file(tmp_path, "ollama", 5, {"host": server.url, "model": "mistral"})
    with pytest.raises(ModelError) as info:
        run(path)
    assert "run `ollama pull mistral`" in str(info.value)
    assert server.chat_requests() == []  # found out before the first request


def test_no_server_says_how_to_start_one(cli, tmp_path):
    path = recipe_file(tmp_path, "ollama", 5, {})
    result = cli("run", path, OLLAMA_HOST="http://127.0.0.1:9")
    assert result.returncode == 1
    assert "no server answers at http://127.0.0.1:9" in result.stderr
    assert "ollama serve" in result.stderr and "Traceback" not in result.stderr


def test_context_grows_with_the_prompt():
    short = [{"role": "user", "content": "x" * 300}]
    long = [{"role": "user", "content": "x" * 30000}]
    assert context_size(short, 1000) == 2048
    assert context_size(long, 1000) >= 10000 + 1000


def test_server_error_on_list_is_a_clear_error(tmp_path):
    with LLMServer(faults=["tags-500"]) as server:
        path = recipe_file(tmp_path, "ollama", 5, {"host": server.url})
        with pytest.raises(RunError, match="answered 500"):
            run(path)
