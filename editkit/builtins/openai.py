"""`use: openai`: caption triplets from the OpenAI chat completions API (or any server that
speaks it, through `base_url`), with strict structured outputs.

The request loop, prompts and parsing are shared with the other LLM generators
(`editkit.captions.llm`); this module maps the `openai` client onto them: which errors are worth a
retry (429, 5xx, timeouts, honouring Retry-After), which end the run at once (bad key,
`insufficient_quota`, unknown model), what the tokens cost, and optional moderation.
The client's own retries are off, so retrying behaves as documented here and is tested.
A server that refuses the connection (or a host that does not resolve) before any request
has been answered is down or misnamed, not busy: that ends the run at once, naming the URL,
instead of backing off for a minute; once a request has been answered, a refused connection
is a restart and is retried like a timeout.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import Field

from editkit import hookimpl
from editkit.captions.llm import LLMCaptions, LLMOptions, Reply, Retry, first_line, retry_after
from editkit.captions.photos import openai_messages
from editkit.errors import ModelError, NeedsKeyError, RunError
from editkit.plugin.kinds import Reject

# USD per 1M tokens (input, output), public list prices; override with the `prices` option.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
}


class OpenAIOptions(LLMOptions):
    model: str = Field("gpt-4o-mini", description="a chat model with structured outputs")
    base_url: str | None = Field(None, description="an OpenAI-compatible server, like "
                                 "http://localhost:8000/v1 (default: OPENAI_BASE_URL or "
                                 "api.openai.com)")
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="USD per 1M (input, output) tokens by model, over "
        "the built-in table; used for the cost estimate in the manifest")
    moderation: bool = Field(False, description="check every kept triplet with the "
                             "moderation endpoint and reject flagged ones")
    moderation_model: str = Field("omni-moderation-latest", description="the moderation "
                                  "endpoint's model (used only with moderation: true)")


def price_for(model: str, extra: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """The price of `model`, or of the longest known name it starts with (dated snapshots)."""
    table = {**DEFAULT_PRICES, **extra}
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


class OpenAICaptions(LLMCaptions):
    name = "openai"
    Options = OpenAIOptions
    options: OpenAIOptions

    def connect(self) -> None:
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            raise NeedsKeyError(
                "openai: OPENAI_API_KEY is not set",
                "export OPENAI_API_KEY=sk-... (https://platform.openai.com/api-keys); for a "
                "local OpenAI-compatible server set base_url and any non-empty key")
        from openai import OpenAI

        self.client = OpenAI(api_key=key, base_url=self.options.base_url, max_retries=0,
                             timeout=self.options.timeout)
        self.answered = False  # set by the first reply: from then on a refusal is retried

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def where(self) -> str:
        return self.options.base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"

    def send(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int,
             seed: int, name: str = "triplets") -> Reply:
        opts = self.options
        response = self._call(lambda: self.client.chat.completions.create(
            model=opts.model, messages=openai_messages(messages), temperature=opts.temperature,
            seed=seed, max_completion_tokens=max_tokens,
            response_format={"type": "json_schema", "json_schema": {
                "name": name, "strict": True, "schema": schema}}))
        self.answered = True
        choice = response.choices[0]
        usage = response.usage
        return Reply(text=choice.message.content, finish=choice.finish_reason or "stop",
                     refusal=getattr(choice.message, "refusal", None),
                     prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                     completion_tokens=getattr(usage, "completion_tokens", 0) or 0)

    def _call(self, request: Any) -> Any:
        """Run one API call, mapping the client's errors onto Retry or a fatal error."""
        import openai

        try:
            return request()
        except openai.APIStatusError as exc:
            status, code = exc.status_code, _error_code(exc)
            message = f"{status} {code or ''} {_error_message(exc)}".replace("  ", " ")
            if status == 401:
                raise NeedsKeyError(f"openai: {self.where()} refused the API key: {message}",
                                    "set a valid OPENAI_API_KEY") from None
            if code == "insufficient_quota":
                raise RunError(f"openai: the account has no quota left: {message}",
                               "add credit or raise the limit at platform.openai.com/settings/"
                               "organization/billing; running again resumes") from None
            if status == 404 or code == "model_not_found":
                raise ModelError(f"openai: model '{self.options.model}' is not available at "
                                 f"{self.where()}: {message}",
                                 f"check {self.options_at}.model (for example gpt-4o-mini)"
                                 ) from None
            if status in (408, 409, 429) or status >= 500:
                raise Retry(message, retry_after(exc.response.headers)) from None
            raise RunError(f"openai: {self.where()} rejected the request: {message}",
                           "the model may not support strict JSON-schema structured outputs; "
                           "pick one that does (gpt-4o-mini, gpt-4.1, ...)") from None
        except openai.APIConnectionError as exc:  # includes timeouts
            reason = not_connected(exc)
            if reason is not None and not getattr(self, "answered", False):
                own = self.options.base_url or os.environ.get("OPENAI_BASE_URL")
                raise RunError(f"openai: cannot connect to {self.where()}: {reason}",
                               f"start the server, or check {self.options_at}.base_url (or "
                               "OPENAI_BASE_URL); a local server's URL ends in /v1" if own
                               else "check the network connection, or set "
                               f"{self.options_at}.base_url to a server you run") from None
            raise Retry(f"cannot reach {self.where()}: {first_line(exc)}") from None

    def review(self, items: list[dict[str, Any] | Reject]) -> list[dict[str, Any] | Reject]:
        if not self.options.moderation:
            return items
        texts = [f"{t.get('input')}\n{t.get('edit')}\n{t.get('output')}"
                 for t in items if isinstance(t, dict)]
        if not texts:
            return items
        try:
            result = self._call(lambda: self.client.moderations.create(
                model=self.options.moderation_model, input=texts))
        except Retry as exc:
            return [Reject("moderation unavailable", exc.reason, data=t)
                    if isinstance(t, dict) else t for t in items]
        verdicts = iter(result.results)
        out: list[dict[str, Any] | Reject] = []
        for item in items:
            if not isinstance(item, dict):
                out.append(item)
                continue
            verdict = next(verdicts)
            if verdict.flagged:
                flags = sorted(k for k, v in verdict.categories.model_dump().items() if v)
                out.append(Reject("moderation: flagged", ", ".join(flags), data=item))
            else:
                out.append(item)
        return out

    def extra_stats(self, usage: dict[str, Any]) -> dict[str, Any]:
        price = price_for(self.options.model, self.options.prices)
        cost = None
        if price is not None:
            cost = round((usage["prompt_tokens"] * price[0]
                          + usage["completion_tokens"] * price[1]) / 1e6, 6)
        return {"model": self.options.model, "cost_usd": cost,
                "price_per_1m_tokens": list(price) if price else None}


def not_connected(exc: BaseException) -> str | None:
    """Why no connection was made, when that is what went wrong (refused, unresolvable or
    unreachable host), else None: timeouts and dropped connections of a live server."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in chain:
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, socket.gaierror):
            return f"the host name does not resolve ({error.strerror or error})"
    for error in chain:  # httpx's, whichever copy the client uses: no connection was made
        if type(error).__name__ == "ConnectError":
            return first_line(error)
    return None


def _error_code(exc: Any) -> str | None:
    code = getattr(exc, "code", None)
    if code:
        return str(code)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code") or inner.get("type")
    return None


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return first_line(exc)


@hookimpl
def register_caption_generators(register):
    register(OpenAICaptions)
