"""A server that is down fails the run in about a second, naming the URL and the fix; one
that answered and then went down is retried like a busy one."""

import json
import socket
import time

import pytest
from llm_helpers import recipe_file, records, run

from editkit.errors import RunError
from editkit.testing.llmserver import LLMServer

FAST = {"backoff": 0.01, "max_backoff": 0.05}


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_a_server_that_is_down_fails_in_a_second_naming_the_url(tmp_path, use):
    url = f"http://127.0.0.1:{closed_port()}"
    where = {"base_url": url + "/v1"} if use == "openai" else {"host": url}
    path = recipe_file(tmp_path, use, 5, where)  # default retries and backoff
    start = time.perf_counter()
    with pytest.raises(RunError) as info:
        run(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, elapsed
    assert url in info.value.message
    assert ("start the server" if use == "openai" else "ollama serve") in info.value.hint


@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_a_server_that_goes_down_after_answering_is_retried(tmp_path, use):
    with LLMServer(faults=["down"]) as server:
        where = {"base_url": server.url + "/v1"} if use == "openai" else {"host": server.url}
        path = recipe_file(tmp_path, use, 8, {**where, "per_request": 2, "concurrency": 1,
                                              "max_retries": 2, "max_failed_requests": 2,
                                              **FAST})
        with pytest.raises(RunError, match="2 requests in a row failed after 2 retries"):
            run(path)
    # the answer given before it went down is kept
    assert sum(r["status"] == "kept" for r in records(tmp_path)) == 2
    usage = json.loads((tmp_path / "run" / "captions" / "llm-usage.json").read_text())
    assert usage["retries"] == 4 and usage["failed_requests"] == 2
