import pytest

from editkit.testing.llmserver import LLMServer


@pytest.fixture
def server():
    with LLMServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def openai_key(monkeypatch):
    """A key for the local server; a test about a missing key unsets it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
