import pytest

from editkit.testing.llmserver import LLMServer


@pytest.fixture
def server():
    with LLMServer() as srv:
        yield srv
