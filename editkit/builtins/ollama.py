"""`use: ollama`: caption triplets from a local Ollama server, constrained by `format` to the
triplet JSON schema.

The request loop, prompts and parsing are shared with the other LLM generators
(`editkit.captions.llm`). Here: the host (option, else OLLAMA_HOST), a check before the
first request that the server runs (else: how to start it) and has the model (else: the
`ollama pull` command), and context/output lengths sized from the prompt so nothing is cut
off silently; a reply that still hits a limit is a rejected record, not a half-parsed one.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from editkit import hookimpl
from editkit.captions.llm import LLMCaptions, LLMOptions, Reply, Retry, first_line
from editkit.errors import ModelError, RunError

DEFAULT_HOST = "http://127.0.0.1:11434"


class OllamaOptions(LLMOptions):
    model: str = Field("llama3.2", description="a model pulled into the Ollama server")
    host: str | None = Field(None, description="the server (default: OLLAMA_HOST, else "
                             f"{DEFAULT_HOST})")
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight; match the "
                             "server's OLLAMA_NUM_PARALLEL")
    num_ctx: int | None = Field(None, ge=512, description="context window (default: sized "
                                "from each prompt plus the reply budget)")
    keep_alive: str = Field("10m", description="how long the server keeps the model loaded")


# context tokens an image may take: vision models encode one in 256 (gemma3) to about 1400
# (qwen2.5vl at 1024 pixels a side) tokens
IMAGE_TOKENS = 1600


def context_size(messages: list[dict[str, Any]], reply_tokens: int) -> int:
    """A context that fits the prompt (at most one token per 3 characters, `IMAGE_TOKENS` per
    image) and the reply, rounded up to 1024: Ollama drops the start of a prompt that
    overflows, silently."""
    prompt = sum(len(m["content"]) // 3 + len(m.get("images") or ()) * IMAGE_TOKENS
                 for m in messages) + 64
    need = prompt + reply_tokens
    return max(2048, -(-need // 1024) * 1024)


class OllamaCaptions(LLMCaptions):
    name = "ollama"
    Options = OllamaOptions
    options: OllamaOptions

    def connect(self) -> None:
        from ollama import Client, ResponseError

        self.host = self.options.host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
        self.client = Client(host=self.host, timeout=self.options.timeout)
        try:
            listing = self.client.list()
        except ConnectionError:
            raise RunError(f"ollama: no server answers at {self.host}",
                           "start it with `ollama serve` (or set OLLAMA_HOST / "
                           f"{self.options_at}.host to where it runs)") from None
        except ResponseError as exc:
            raise RunError(f"ollama: {self.host} answered {exc.status_code}: {exc.error}",
                           "check that OLLAMA_HOST points at an Ollama server") from None
        names = {m.model for m in listing.models}
        model = self.options.model
        if model not in names and f"{model}:latest" not in names:
            raise self.missing_model()

    def missing_model(self) -> ModelError:
        return ModelError(f"ollama: model '{self.options.model}' is not pulled on {self.host}",
                          f"run `ollama pull {self.options.model}`")

    def close(self) -> None:
        client = getattr(self, "client", None)
        inner = getattr(client, "_client", None)
        if inner is not None:
            inner.close()

    def send(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int,
             seed: int, name: str = "triplets") -> Reply:
        import httpx
        from ollama import ResponseError

        opts = self.options
        num_ctx = opts.num_ctx or context_size(messages, max_tokens)
        try:
            response = self.client.chat(
                model=opts.model, messages=messages, format=schema, keep_alive=opts.keep_alive,
                options={"num_ctx": num_ctx, "num_predict": max_tokens,
                         "temperature": opts.temperature, "seed": seed})
        except ResponseError as exc:
            if exc.status_code == 404:
                raise self.missing_model() from None
            if exc.status_code in (408, 429) or exc.status_code >= 500:
                raise Retry(f"{exc.status_code}: {exc.error}") from None
            raise RunError(f"ollama: {self.host} rejected the request: {exc}",
                           "check the model supports structured outputs (format)") from None
        except ConnectionError:
            raise Retry(f"no server answers at {self.host} (start it with `ollama serve`)"
                        ) from None
        except httpx.HTTPError as exc:  # timeouts, dropped connections
            raise Retry(f"{type(exc).__name__}: {first_line(exc)}") from None
        prompt_tokens = response.prompt_eval_count or 0
        reply_tokens = response.eval_count or 0
        finish = response.done_reason or "stop"
        if prompt_tokens + reply_tokens >= num_ctx:
            finish = "length"  # the context filled up: something was cut
        return Reply(text=response.message.content, finish=finish,
                     prompt_tokens=prompt_tokens, completion_tokens=reply_tokens)

    def extra_stats(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.options.model, "host": self.host, "cost_usd": 0.0}


@hookimpl
def register_caption_generators(register):
    register(OllamaCaptions)
