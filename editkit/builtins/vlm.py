"""`use: vlm`: a vision-language model, asked through OpenAI's API or Ollama's, scores each
pair from 1 to 10: was the instruction carried out (`instruction`), was everything else kept
(`preserved`), is the after image sound, free of artefacts (`quality`). A pair is kept when
every score meets its threshold; the reject reason names each score that fell short, and
the model's one-sentence reason.

Requests go through the caption plugins' clients (`openai`, `ollama`): the same key and
server checks, the same retries of 429/5xx/timeouts with backoff (Retry-After honoured), the
same fatal errors. Each request carries the instruction and both images (before, then after,
scaled to `max_side`) and asks for strict JSON. A pair whose request still fails, a refusal
or a reply that cannot be read is rejected with `vlm: no score: WHY`, never cached, so it is
asked again whenever the stage is redone; `max_failed_requests` requests in a row failing
stop the stage (the server is down), and running again asks only what is not yet scored.

Scores are cached in the run's `cache/` by the two images' content, the instruction, the
backend, model, prompt and sampling settings, so a resumed stage, or one redone with new
thresholds (`--fresh`), asks nothing again for a pair scored before; another model or
`guidance` asks anew.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.captions.llm import LLMCaptions, LLMOptions, Reply, Usage, _reply_json
from editkit.captions.photos import encode_image
from editkit.errors import InputError, RunError
from editkit.models.encoders import UNREADABLE, EmbeddingCache, decode_image, read_bytes
from editkit.plugin.kinds import Filter, FilterJob, PluginOptions, Reject
from editkit.run.folder import atomic_write_json, fingerprint

SCORES = ("instruction", "preserved", "quality")
SCALE = list(range(1, 11))
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "ollama": "llama3.2-vision"}
SCHEMA_NAME = "pair_scores"
SYSTEM = """\
You check image edits. You are shown two images: the first is an original image, the second \
is the result of applying an edit instruction to it. Score the result from 1 (worst) to 10 \
(best) on each of three scales:
- instruction: was the instruction carried out? 1: not at all (nothing changed, or the wrong \
thing did); 10: exactly as asked.
- preserved: was everything the instruction does not ask to change kept (scene, layout, \
objects, identities, colours, viewpoint)? 1: a different image; 10: only the instructed \
change.
- quality: is the result a sound image? 1: broken (blank, one flat colour, noise, heavy \
artefacts, melted or distorted objects); 10: as clean as the original.
Score each scale on its own. "reason" is one short sentence on what you saw."""
USER = ('Instruction: {instruction}\nThe first image is the original, the second the '
        'edited result. Answer with JSON: {{"instruction": n, "preserved": n, "quality": n, '
        '"reason": "..."}}.')

_LLM = LLMOptions.model_fields  # the request options the caption plugins define


def score_schema() -> dict[str, Any]:
    """The reply's JSON schema, strict-mode ready: the three scores as integers 1 to 10
    (an enum, which every structured-output backend supports), and a reason."""
    properties: dict[str, Any] = {name: {"type": "integer", "enum": SCALE} for name in SCORES}
    properties["reason"] = {"type": "string"}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


class VLMOptions(PluginOptions):
    backend: Literal["openai", "ollama"] = Field(
        "openai", description="openai (the OpenAI API, or any server speaking it through "
        "base_url; needs OPENAI_API_KEY) or ollama (a local Ollama server)")
    model: str | None = Field(None, description="a vision model with structured outputs "
                              "(default: gpt-4o-mini for openai, llama3.2-vision for ollama)")
    base_url: str | None = Field(None, description="openai: an OpenAI-compatible server, like "
                                 "http://localhost:8000/v1 (default: OPENAI_BASE_URL or "
                                 "api.openai.com)")
    host: str | None = Field(None, description="ollama: the server (default: OLLAMA_HOST, "
                             "else http://127.0.0.1:11434)")
    min_instruction: int = Field(6, ge=1, le=10, description="the instruction was carried "
                                 "out, at least (1 to 10; 1: off)")
    min_preserved: int = Field(6, ge=1, le=10, description="everything else was kept, at "
                               "least (1 to 10; 1: off)")
    min_quality: int = Field(6, ge=1, le=10, description="the after image is sound, free of "
                             "artefacts, at least (1 to 10; 1: off)")
    guidance: str | None = Field(None, description="more for the model to weigh, added to its "
                                 "instructions (like 'a change of lighting counts as kept'); "
                                 "changing it asks every pair again")
    max_side: int = Field(512, ge=64, le=2048, description="images are sent scaled down to "
                          "at most this many pixels a side")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature of "
                               "each request")
    max_tokens: int = Field(1000, ge=64, description="reply token limit (a reasoning model "
                            "spends some of it before answering)")
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight at once (ollama: "
                             "match the server's OLLAMA_NUM_PARALLEL)")
    timeout: float = _LLM["timeout"]
    max_retries: int = _LLM["max_retries"]
    backoff: float = _LLM["backoff"]
    max_backoff: float = _LLM["max_backoff"]
    max_failed_requests: int = _LLM["max_failed_requests"]
    triplets_per_batch: int = Field(16, ge=1, description="triplets per scoring call/shard")

    @model_validator(mode="after")
    def _server_of_the_backend(self) -> "VLMOptions":
        """`base_url` is OpenAI's and `host` Ollama's: the other backend's is a mistake."""
        wrong = {"openai": "host", "ollama": "base_url"}[self.backend]
        if getattr(self, wrong) is not None:
            right = {"host": "base_url", "base_url": "host"}[wrong]
            raise ValueError(f"{wrong} is for backend {'ollama' if wrong == 'host' else 'openai'}"
                             f"; with backend {self.backend} the server is {right}")
        return self


class ScoreCache(EmbeddingCache):
    """Scores on disk, laid out like the embeddings: one JSON file per pair, in a folder per
    model and prompt (each file written atomically, so runs and processes may share it)."""

    def _path(self, key: str) -> Path:
        return super()._path(key).with_suffix(".json")

    def get(self, key: str) -> dict[str, Any] | None:  # type: ignore[override]
        if self.folder is None or not self._path(key).exists():
            return None
        try:
            return read_scores(json.loads(self._path(key).read_text()))
        except (OSError, ValueError):
            return None  # a damaged entry is asked again

    def put(self, key: str, data: dict[str, Any]) -> None:  # type: ignore[override]
        if self.folder is not None:
            atomic_write_json(self._path(key), data, durable=False)


def read_scores(data: Any) -> dict[str, Any] | None:
    """The scores and reason of a reply's JSON, or None when it does not fit the schema."""
    if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
        return None
    scores = {name: data.get(name) for name in SCORES}
    if not all(type(v) is int and 1 <= v <= 10 for v in scores.values()):
        return None
    return {**scores, "reason": data["reason"].strip()[:300]}


class VLMFilter(Filter):
    name = "vlm"
    Options = VLMOptions
    options: VLMOptions

    def model(self) -> str:
        return self.options.model or DEFAULT_MODELS[self.options.backend]

    def system_prompt(self) -> str:
        guidance = (self.options.guidance or "").strip()
        return SYSTEM + (f"\nAlso: {guidance}" if guidance else "")

    def cache_key(self) -> str:
        """The cache folder: what a score depends on besides the pair itself."""
        opts = self.options
        return "vlm-" + fingerprint({
            "backend": opts.backend, "model": self.model(), "system": self.system_prompt(),
            "user": USER, "schema": score_schema(), "max_side": opts.max_side,
            "temperature": opts.temperature})

    def asker(self) -> LLMCaptions:
        """The backend's caption plugin with these options, connected once (a stage whose
        pairs are all cached never connects)."""
        client = getattr(self, "_asker", None)
        if client is None:
            opts = self.options
            common = {name: getattr(opts, name) for name in (  # what `ask` and `send` use
                "temperature", "timeout", "max_retries", "backoff", "max_backoff")}
            if opts.backend == "openai":
                from editkit.builtins.openai import OpenAICaptions

                client = OpenAICaptions(OpenAICaptions.Options(
                    model=self.model(), base_url=opts.base_url, **common))
            else:
                from editkit.builtins.ollama import OllamaCaptions

                client = OllamaCaptions(OllamaCaptions.Options(
                    model=self.model(), host=opts.host, **common))
            client.options_at = "filters[vlm].options"
            client.connect()
            self._asker = client
        return client

    def score(self, job: FilterJob) -> Iterator[dict[str, Any]]:
        opts = self.options
        cache = ScoreCache(job.cache_dir, self.cache_key())
        answers: dict[str, dict[str, Any] | Reject] = {}
        todo: list[tuple[dict[str, Any], str]] = []
        for pair in job.pairs:
            key = _pair_key(pair)
            if isinstance(key, Reject):
                answers[pair["id"]] = key
            elif (cached := cache.get(key)) is not None:
                answers[pair["id"]] = cached
            else:
                todo.append((pair, key))
        usage = Usage(None)
        job.stats.update(pairs_cached=len(answers) - sum(isinstance(a, Reject)
                                                         for a in answers.values()))
        if todo:
            answers.update(self._ask_all(todo, cache, usage))
        job.stats.update(usage.snapshot(), model=self.model(), backend=opts.backend,
                         pairs_asked=len(todo))
        for pair in job.pairs:
            yield self.verdict(pair["id"], answers[pair["id"]])

    def _ask_all(self, todo: list[tuple[dict[str, Any], str]], cache: ScoreCache,
                 usage: Usage) -> dict[str, dict[str, Any] | Reject]:
        """Ask for every pair in `todo`, `concurrency` at a time; scores are cached as they
        come. A fatal error, or `max_failed_requests` failed requests in a row, stops all."""
        opts = self.options
        client = self.asker()
        client.prepare_requests()
        answers: dict[str, dict[str, Any] | Reject] = {}
        failed_in_row = 0
        pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="vlm")
        try:
            futures = {pool.submit(self._ask, client, pair, key, cache, usage): pair["id"]
                       for pair, key in todo}
            for future in as_completed(futures):
                answer = future.result()  # a fatal EditkitError ends the stage here
                answers[futures[future]] = answer
                failed = isinstance(answer, Reject) and answer.reason == "request failed"
                failed_in_row = failed_in_row + 1 if failed else 0
                if failed_in_row >= opts.max_failed_requests:
                    assert isinstance(answer, Reject)
                    raise RunError(
                        f"vlm: {failed_in_row} requests in a row failed after "
                        f"{opts.max_retries} retries each (last: {answer.detail})",
                        "check the server and the model; running again asks only the pairs "
                        "not yet scored")
        finally:
            client.stop_requests()
            pool.shutdown(wait=False, cancel_futures=True)
        return answers

    def _ask(self, client: LLMCaptions, pair: dict[str, Any], key: str, cache: ScoreCache,
             usage: Usage) -> dict[str, Any] | Reject:
        """One pair's scores (cached), or a `Reject` saying why there are none."""
        images = []
        for role in ("before", "after"):
            path = pair[f"{role}_path"]
            try:
                images.append(encode_image(decode_image(read_bytes(path), path),
                                           self.options.max_side))
            except InputError as exc:
                return _unreadable(role, exc)
        messages = [{"role": "system", "content": self.system_prompt()},
                    {"role": "user", "content": USER.format(instruction=json.dumps(
                        pair["edit"], ensure_ascii=False)), "images": images}]
        reply = client.ask(messages, score_schema(), self.options.max_tokens,
                           int(key[:8], 16) % 2**31, usage, name=SCHEMA_NAME)
        if reply is None:
            return Reject("request failed", "stopped")
        if isinstance(reply, Reject):
            return reply
        return self._parse(reply, cache, key)

    @staticmethod
    def _parse(reply: Reply, cache: ScoreCache, key: str) -> dict[str, Any] | Reject:
        data = _reply_json(reply, "guidance")
        if isinstance(data, Reject):
            return data
        scores = read_scores(data)
        if scores is None:
            return Reject("invalid schema", "expected integer instruction, preserved and "
                          f"quality from 1 to 10 and a reason: {(reply.text or '')[:300]}")
        cache.put(key, scores)
        return scores

    def verdict(self, pair_id: str, answer: dict[str, Any] | Reject) -> dict[str, Any]:
        """The filter's result for one pair: its scores, and every score below its
        threshold, or why there are no scores."""
        if isinstance(answer, Reject):
            if answer.reason == UNREADABLE:
                return {"id": pair_id, "scores": {}, "keep": False,
                        "criterion": UNREADABLE, "reason": answer.detail}
            detail = f" ({answer.detail})" if answer.detail else ""
            return {"id": pair_id, "scores": {}, "keep": False,
                    "criterion": f"no score: {answer.reason}",
                    "reason": f"vlm: no score: {answer.reason}{detail}"}
        thresholds = {name: getattr(self.options, f"min_{name}") for name in SCORES}
        failed = [(f"min_{name}", f"vlm {name} {answer[name]} < min_{name} {thresholds[name]}")
                  for name in SCORES if answer[name] < thresholds[name]]
        reason = None
        if failed:
            reason = "; ".join(text for _, text in failed) + ": " + json.dumps(
                answer["reason"], ensure_ascii=False)
        return {"id": pair_id, "scores": {f"vlm_{name}": answer[name] for name in SCORES},
                "keep": not failed, "criterion": failed[0][0] if failed else None,
                "reason": reason}


def _pair_key(pair: dict[str, Any]) -> str | Reject:
    """The pair's cache key (both images' content and the instruction), or why an image
    cannot be read."""
    digests = {}
    for role in ("before", "after"):
        try:
            digests[role] = hashlib.sha256(read_bytes(pair[f"{role}_path"])).hexdigest()
        except InputError as exc:
            return _unreadable(role, exc)
    return fingerprint({"instruction": pair["edit"], **digests})


def _unreadable(role: str, exc: InputError) -> Reject:
    """A pair whose image could not be read or decoded, rejected as the other filters do."""
    return Reject(UNREADABLE, f"{UNREADABLE} ({role}): {exc.message}")


@hookimpl
def register_filters(register: Any) -> None:
    register(VLMFilter)
