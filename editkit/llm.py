"""What every LLM caption generator shares: options, prompts, schema, the request loop.

A plugin (`openai`, `ollama`, a third-party one) only says how to send one request and how
its client's errors map onto three outcomes: a `Reply`, a `Retry` (transient: 429, 5xx,
timeouts) or an `EditkitError` (fatal: bad key, no quota, unknown model). Everything else is
here once: few-shot prompts from a domain pack, the JSON schema, bounded concurrency,
backoff that honours `Retry-After`, reply parsing into triplets or `Reject`s, and token usage
kept in the captions folder so a killed run keeps its counts.
"""

from __future__ import annotations

import json
import random
import threading
import time
from abc import abstractmethod
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import Field

from .domain import DomainPack, load_pack
from .errors import EditkitError, RunError
from .kinds import CaptionGenerator, CaptionJob, PluginOptions, Reject
from .runs import atomic_write_json

EDIT_KINDS = ["add", "remove", "replace", "change", "restyle", "season", "time_of_day",
              "weather"]
REGIONS = ["foreground", "background", "global"]
USAGE_FILE = "llm-usage.json"


class LLMOptions(PluginOptions):
    """Options every LLM caption generator has (plugins add their own)."""

    model: str = Field(description="the chat model to ask")
    domain: str | None = Field(None, description="what the pictures show, like 'urban street "
                               "views' (default: the domain pack's)")
    domain_pack: str | None = Field(None, description="built-in pack name (streetview, "
                                    "interior) or a folder with pack.yaml")
    per_request: int = Field(10, ge=1, le=100, description="triplets asked for per request")
    examples: int = Field(6, ge=0, le=50, description="few-shot examples per request, sampled "
                          "from the pack (seeded) so requests differ")
    annotate: bool = Field(True, description="also ask for edit_kind, changed words, region")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=64, description="reply token limit (default: "
                                   "enough for per_request triplets)")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one reply")
    max_retries: int = Field(6, ge=0, description="retries of one request on 429/5xx/timeouts")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles, "
                           "with jitter, up to max_backoff (Retry-After wins when given)")
    max_backoff: float = Field(60.0, ge=0)
    max_failed_requests: int = Field(5, ge=1, description="stop after this many requests in a "
                                     "row fail even after their retries")


@dataclass
class Reply:
    """One answer: the text, why it stopped, and what it cost."""

    text: str | None
    finish: str = "stop"  # stop, length, refusal, content_filter, ...
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Retry(Exception):
    """A transient failure: try again after `after` seconds (None: exponential backoff)."""

    def __init__(self, reason: str, after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.after = after


def triplet_schema(annotate: bool = True) -> dict[str, Any]:
    """The JSON schema of a reply, strict-mode ready (all fields required, no extras)."""
    item: dict[str, Any] = {"input": {"type": "string"}, "edit": {"type": "string"},
                            "output": {"type": "string"}}
    if annotate:
        item.update({"edit_kind": {"type": "string", "enum": EDIT_KINDS},
                     "words": {"type": "array", "items": {"type": "string"}},
                     "region": {"type": "string", "enum": REGIONS}})
    return {"type": "object",
            "properties": {"triplets": {"type": "array", "items": {
                "type": "object", "properties": item, "required": list(item),
                "additionalProperties": False}}},
            "required": ["triplets"], "additionalProperties": False}


def build_messages(pack: DomainPack, domain: str, n: int, shots: int, annotate: bool,
                   rng: random.Random) -> list[dict[str, str]]:
    """System prompt + a user turn with sampled examples and a sampled mix of edit kinds."""
    fields = ("input", "edit", "output") + (("edit_kind", "words", "region") if annotate else ())
    chosen = rng.sample(pack.examples, min(shots, len(pack.examples)))
    lines = [json.dumps({k: ex[k] for k in fields if k in ex}) for ex in chosen]
    kinds = sorted(rng.choices(EDIT_KINDS, k=n))
    mix = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    user = ""
    if lines:
        user += "Examples of good triplets:\n" + "\n".join(lines) + "\n\n"
    user += (f"Write {n} new triplets for {domain}, all different from each other and from "
             f"the examples, in varied scenes and wordings. Edit kinds: {mix}. "
             f'Answer with JSON: {{"triplets": [...]}}.')
    return [{"role": "system", "content": pack.system.replace("{domain}", domain)},
            {"role": "user", "content": user}]


def parse_reply(reply: Reply) -> list[dict[str, Any] | Reject]:
    """Triplets from a reply, or one `Reject` that says why the reply was unusable."""
    snippet = (reply.text or "")[:300]
    if reply.refusal:
        return [Reject("refused", reply.refusal[:300])]
    if reply.finish == "length":
        return [Reject("truncated reply", "the reply hit the token limit; raise max_tokens or "
                       f"lower per_request: {snippet}")]
    if reply.finish == "content_filter":
        return [Reject("refused", "content filter")]
    try:
        data = json.loads(reply.text or "")
    except json.JSONDecodeError as exc:
        return [Reject("malformed JSON", f"{exc.msg} at {exc.pos}: {snippet}")]
    if not isinstance(data, dict) or not isinstance(data.get("triplets"), list):
        return [Reject("invalid schema", f'expected {{"triplets": [...]}}: {snippet}')]
    if not data["triplets"]:
        return [Reject("empty reply", snippet)]
    return [_clean(item) for item in data["triplets"]]


def _clean(item: Any) -> Any:
    """Keep only the schema's fields, and the optional ones only when well-formed, so a
    loose server (a non-strict one) cannot put stray keys into the records."""
    if not isinstance(item, dict):
        return item
    out = {k: item[k] for k in ("input", "edit", "output") if k in item}
    if item.get("edit_kind") in EDIT_KINDS:
        out["edit_kind"] = item["edit_kind"]
    if isinstance(item.get("words"), list) and all(isinstance(w, str) for w in item["words"]):
        out["words"] = item["words"]
    if item.get("region") in REGIONS:
        out["region"] = item["region"]
    return out


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                continue
    return None


@dataclass
class Usage:
    """Requests and tokens spent, saved beside the records after every reply (renamed into
    place, not flushed to disk: a killed run keeps it, a power cut may lose the last counts)."""

    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, work_dir: Path | None, seed: dict[str, Any]) -> "Usage":
        path = work_dir / USAGE_FILE if work_dir is not None else None
        data = dict(seed.get("llm", {}))
        if path is not None and path.exists():
            data = json.loads(path.read_text())
        for key in ("requests", "failed_requests", "retries", "prompt_tokens",
                    "completion_tokens"):
            data.setdefault(key, 0)
        return cls(path, data)

    def add(self, extra: Callable[[dict[str, Any]], dict[str, Any]], **counts: int) -> None:
        """Count, refresh the derived stats (`extra`), and save, from any worker thread."""
        with self.lock:
            for key, n in counts.items():
                self.data[key] = self.data.get(key, 0) + n
            self.data.update(extra(self.data))
            if self.path is not None:
                atomic_write_json(self.path, self.data, durable=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.data)


class LLMCaptions(CaptionGenerator):
    """Base of the LLM generators: subclasses implement `connect`, `send` and `close`."""

    Options = LLMOptions
    options: LLMOptions

    # --- what a plugin provides -----------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Make the client and fail fast (missing key, server down, model not there)."""

    @abstractmethod
    def send(self, messages: list[dict[str, str]], schema: dict[str, Any],
             max_tokens: int, seed: int) -> Reply:
        """One request; raise `Retry` for transient failures, `EditkitError` for fatal ones."""

    def close(self) -> None:
        """Release the client; in-flight requests may fail, which is then ignored."""

    def review(self, items: list[dict[str, Any] | Reject]) -> list[dict[str, Any] | Reject]:
        """A last look at parsed triplets (moderation); the default keeps them all."""
        return items

    def extra_stats(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Stats computed from usage, like an estimated cost."""
        return {}

    # --- the shared loop -------------------------------------------------------------------

    def reply_tokens(self) -> int:
        opts = self.options
        return opts.max_tokens or (opts.per_request * (90 if opts.annotate else 60) + 200)

    def generate(self, job: CaptionJob) -> Iterator[list[dict[str, Any] | Reject]]:
        opts = self.options
        pack = load_pack(opts.domain_pack)
        domain = opts.domain or pack.domain
        schema = triplet_schema(opts.annotate)
        usage = Usage.load(job.work_dir, job.stats)
        self.connect()
        self._stop = threading.Event()
        self._pause_until = 0.0
        self._pause_lock = threading.Lock()
        pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="llm")
        inflight: dict[Future[Any], int] = {}
        counter = iter(range(2**62))
        yielded = 0
        failed_in_row = 0

        def top_up(pending: int) -> None:
            """Keep `concurrency` requests in flight while more triplets may be needed:
            kept so far, plus replies not yet handed over, plus requests in flight, each
            discounted by the share of triplets the stage has kept so far."""
            rate = max(0.05, job.kept / yielded) if yielded else 1.0
            while (len(inflight) < opts.concurrency and job.kept
                   + (pending + len(inflight) * opts.per_request) * rate < job.count):
                number = next(counter)
                rng = random.Random(f"editkit-llm:{job.seed}:{job.start}:{number}")
                messages = build_messages(pack, domain, opts.per_request, opts.examples,
                                          opts.annotate, rng)
                future = pool.submit(self._request, messages, schema, rng.randrange(2**31),
                                     usage)
                inflight[future] = number

        ready: deque[list[dict[str, Any] | Reject]] = deque()
        fatal: EditkitError | None = None
        try:
            while True:
                # harvest every finished request (block only when nothing is ready) and send
                # their replacements before a batch is handed over to be written
                done, _ = wait(inflight, timeout=0 if ready else None,
                               return_when=FIRST_COMPLETED)
                for future in sorted(done, key=inflight.__getitem__):
                    del inflight[future]
                    try:
                        ready.append(future.result())
                    except EditkitError as exc:  # fatal: hand over what came back, then stop
                        fatal = fatal or exc
                if fatal is None:
                    top_up(sum(len(items) for items in ready))
                elif not ready:
                    raise fatal
                if not ready:
                    continue
                items = ready.popleft()
                job.stats["llm"] = usage.snapshot()
                failed = len(items) == 1 and isinstance(items[0], Reject) and \
                    items[0].reason == "request failed"
                failed_in_row = failed_in_row + 1 if failed else 0
                if failed_in_row >= opts.max_failed_requests:
                    assert isinstance(items[0], Reject)
                    raise RunError(
                        f"captions: {failed_in_row} requests in a row failed after "
                        f"{opts.max_retries} retries each (last: {items[0].detail})",
                        "check the server and the model; running again resumes")
                yielded += len(items)
                yield items
        finally:
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.close()

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any], seed: int,
                 usage: Usage) -> list[dict[str, Any] | Reject]:
        """One request with its retries; the reply parsed into triplets or a reject."""
        opts = self.options
        last = ""
        for attempt in range(opts.max_retries + 1):
            self._wait_for_pause()
            if self._stop.is_set():
                return []
            try:
                reply = self.send(messages, schema, self.reply_tokens(), seed)
            except (EditkitError, KeyboardInterrupt):
                raise
            except Retry as exc:
                last = exc.reason
                if attempt == opts.max_retries:
                    break
                delay = exc.after if exc.after is not None else \
                    min(opts.max_backoff, opts.backoff * 2 ** attempt) * random.uniform(0.5, 1)
                if exc.after is not None:  # the server asked everyone to wait
                    with self._pause_lock:
                        self._pause_until = max(self._pause_until, time.monotonic() + delay)
                usage.add(self.extra_stats, retries=1)
                if self._stop.wait(delay):
                    return []
                continue
            except Exception as exc:  # a reply the client could not make sense of
                usage.add(self.extra_stats, failed_requests=1)
                return [Reject("request failed", f"unusable response: "
                               f"{type(exc).__name__}: {first_line(exc)}")]
            usage.add(self.extra_stats, requests=1, prompt_tokens=reply.prompt_tokens,
                      completion_tokens=reply.completion_tokens)
            return self.review(parse_reply(reply))
        usage.add(self.extra_stats, failed_requests=1)
        return [Reject("request failed", f"{last} (after {opts.max_retries} retries)")]

    def _wait_for_pause(self) -> None:
        with self._pause_lock:
            left = self._pause_until - time.monotonic()
        if left > 0:
            self._stop.wait(left)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, short enough for a record or an error."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
