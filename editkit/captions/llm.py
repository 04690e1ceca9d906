"""What every LLM caption generator shares: options, prompts, schema, the request loop.

A plugin (`openai`, `ollama`, a third-party one) only says how to send one request and how
its client's errors map onto three outcomes: a `Reply`, a `Retry` (transient: 429, 5xx,
timeouts) or an `EditkitError` (fatal: bad key, no quota, unknown model). Everything else is
here once: few-shot prompts from a domain pack, the JSON schema, bounded concurrency,
backoff that honours `Retry-After`, reply parsing into triplets or `Reject`s, and token usage
kept in the captions folder so a killed run keeps its counts.

With `input_captions` the model is given existing captions, `per_request` at a time, and
writes only each one's edit and output; the triplet keeps the given caption verbatim, a reply
item whose input was rewritten or a given caption the reply skipped is a rejected record, and
every record says which caption it came from (`input_index`, or `input_indices` for a reply
rejected whole), so a resumed run sends the captions no record names yet, in order: the next
unused ones, and again those whose request failed outright.

With `photos` each request carries one of the user's photos to a vision model, which
describes it (the `input` of every triplet of that photo, verbatim) and writes
`edits_per_photo` edits of it. Every record names its photo (`photo`, `photo_name`), rejected
ones too (an unreadable file is rejected before any request), so a resumed run sends only the
photos no record names yet, and again those whose request failed outright.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from abc import abstractmethod
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from editkit.captions.packs import DomainPack, PackRef, load_pack
from editkit.captions.photos import encode_image, list_photos, read_photo
from editkit.errors import EditkitError, InputError, RunError
from editkit.plugin.kinds import CaptionGenerator, CaptionJob, PluginOptions, Reject
from editkit.run.folder import RecordStore, atomic_write_json

EDIT_KINDS = ["add", "remove", "replace", "change", "restyle", "season", "time_of_day",
              "weather"]
REGIONS = ["foreground", "background", "global"]
USAGE_FILE = "llm-usage.json"


class LLMOptions(PluginOptions):
    """Options every LLM caption generator has (plugins add their own)."""

    model: str = Field(description="the chat model to ask")
    domain: str | None = Field(None, description="what the pictures show, like 'urban street "
                               "views' (default: the domain pack's)")
    domain_pack: PackRef | None = Field(None, description="built-in pack name (streetview, "
                                    "interior) or a folder with pack.yaml")
    per_request: int = Field(10, ge=1, le=100, description="triplets asked for per request")
    examples: int = Field(6, ge=0, le=50, description="few-shot examples per request, sampled "
                          "from the pack (seeded) so requests differ")
    annotate: bool = Field(True, description="also ask for edit_kind, changed words, region")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="sampling temperature of "
                               "each request: lower gives more alike triplets, higher more "
                               "varied ones")
    max_tokens: int | None = Field(None, ge=64, description="reply token limit (default: "
                                   "enough for per_request triplets)")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one reply")
    max_retries: int = Field(6, ge=0, description="retries of one request on 429/5xx/timeouts")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles, "
                           "with jitter, up to max_backoff (Retry-After wins when given)")
    max_backoff: float = Field(60.0, ge=0, description="longest backoff delay in seconds "
                               "(a server's Retry-After is waited in full)")
    max_failed_requests: int = Field(5, ge=1, description="stop after this many requests in a "
                                     "row fail even after their retries")
    input_captions: str | None = Field(
        None, description="existing captions to edit (a text file with one a line, a .jsonl, "
        ".json or .csv file with a caption, input or text column, or a folder of them): the "
        "model writes only each one's edit and output, per_request captions a request")
    photos: str | None = Field(
        None, description="a folder of your own photos (.png, .jpg, .webp, ...): each request "
        "sends one photo to a vision model, which describes it (the input of every triplet "
        "of that photo) and writes edits_per_photo edits of it; every record names its photo")
    edits_per_photo: int = Field(4, ge=1, le=20, description="edits asked for per photo "
                                 "(with photos; per_request is then unused): more gives more "
                                 "triplets per request, all with the same input")

    @field_validator("input_captions")
    @classmethod
    def _captions_readable(cls, value: str | None) -> str | None:
        """A missing or empty file is refused at validation, before any request."""
        if value is None:
            return value
        from editkit.captions.files import iter_captions

        if not Path(value).expanduser().exists():
            raise PydanticCustomError("input_captions", "no such file or folder")
        try:
            first = next(iter_captions(value), None)
        except EditkitError as exc:
            raise PydanticCustomError("input_captions", "{reason}", {
                "reason": exc.message.removeprefix("input captions: ")}) from None
        if first is None:
            raise PydanticCustomError("input_captions", "it holds no captions")
        return value

    @field_validator("photos")
    @classmethod
    def _photos_readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A missing or imageless folder, or photos given with input captions, is refused at
        validation, before any request."""
        if value is None:
            return value
        if info.data.get("input_captions") is not None:
            raise PydanticCustomError("photos", "input_captions is set too: the inputs come "
                                      "from the photos or from the captions, not both")
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise PydanticCustomError("photos", "no such folder" if not folder.exists()
                                      else "not a folder of photos")
        if not list_photos(folder):
            raise PydanticCustomError("photos", "it holds no images (.png, .jpg, .webp, ...)")
        return value


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


def _strict_object(properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema as strict mode wants it: every property required, no extras."""
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _item_schema(annotate: bool, fields: tuple[str, ...]) -> dict[str, Any]:
    item: dict[str, Any] = {key: {"type": "string"} for key in fields}
    if annotate:
        item.update({"edit_kind": {"type": "string", "enum": EDIT_KINDS},
                     "words": {"type": "array", "items": {"type": "string"}},
                     "region": {"type": "string", "enum": REGIONS}})
    return _strict_object(item)


def triplet_schema(annotate: bool = True) -> dict[str, Any]:
    """The JSON schema of a reply, strict-mode ready (all fields required, no extras)."""
    return _strict_object({"triplets": {
        "type": "array", "items": _item_schema(annotate, ("input", "edit", "output"))}})


def photo_schema(annotate: bool = True) -> dict[str, Any]:
    """The JSON schema of a reply about one photo: its description, and edits of it, each
    with the description after the edit (strict-mode ready like `triplet_schema`)."""
    return _strict_object({"description": {"type": "string"}, "edits": {
        "type": "array", "items": _item_schema(annotate, ("edit", "output"))}})


def _shots_and_mix(pack: DomainPack, n: int, shots: int, annotate: bool,
                   rng: random.Random) -> tuple[str, str]:
    """The few-shot block a request starts with, and the sampled mix of `n` edit kinds."""
    fields = ("input", "edit", "output") + (("edit_kind", "words", "region") if annotate else ())
    chosen = rng.sample(pack.examples, min(shots, len(pack.examples)))
    lines = [json.dumps({k: ex[k] for k in fields if k in ex}) for ex in chosen]
    kinds = sorted(rng.choices(EDIT_KINDS, k=n))
    mix = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    shots_block = "Examples of good triplets:\n" + "\n".join(lines) + "\n\n" if lines else ""
    return shots_block, mix


def build_messages(pack: DomainPack, domain: str, n: int, shots: int, annotate: bool,
                   rng: random.Random) -> list[dict[str, str]]:
    """System prompt + a user turn with sampled examples and a sampled mix of edit kinds."""
    user, mix = _shots_and_mix(pack, n, shots, annotate, rng)
    user += (f"Write {n} new triplets for {domain}, all different from each other and from "
             f"the examples, in varied scenes and wordings. Edit kinds: {mix}. "
             f'Answer with JSON: {{"triplets": [...]}}.')
    return [{"role": "system", "content": pack.system.replace("{domain}", domain)},
            {"role": "user", "content": user}]


def build_edit_messages(pack: DomainPack, domain: str, captions: list[str], shots: int,
                        annotate: bool, rng: random.Random) -> list[dict[str, str]]:
    """Like `build_messages`, but the inputs are given: one JSON string a line, each to be
    copied into "input" as it is, with an edit and the caption after it."""
    n = len(captions)
    user, mix = _shots_and_mix(pack, n, shots, annotate, rng)
    user += (f"Captions of {domain}, one JSON string a line:\n"
             + "\n".join(json.dumps(c, ensure_ascii=False) for c in captions) + "\n\n"
             f"For each of these {n} captions, in order, write one triplet: \"input\" is the "
             f"caption copied exactly as given, \"edit\" one instruction that fits the photo "
             f"it describes, \"output\" the caption after that edit. Edit kinds: {mix}. "
             f'Answer with JSON: {{"triplets": [...]}}, one item per caption.')
    return [{"role": "system", "content": pack.system.replace("{domain}", domain)},
            {"role": "user", "content": user}]


def build_photo_messages(pack: DomainPack, domain: str, n: int, shots: int, annotate: bool,
                         rng: random.Random, image: str) -> list[dict[str, Any]]:
    """Like `build_messages`, but about one photo (`image`: base64 PNG, sent the Ollama way
    as the user turn's `images`): the model describes the photo, then writes `n` edits of
    it; the examples show the style of captions and edits, not this photo."""
    user, mix = _shots_and_mix(pack, n, shots, annotate, rng)
    user += (f"The attached image is a photo of {domain}. First describe this photo in one "
             "caption, in the style of the examples' inputs, naming only what can be seen in "
             f'it: this is "description". Then write {n} edits one can make to THIS photo, '
             'all different from each other: "edit" is one instruction that fits what the '
             'photo shows (remove or change only what is in it), and "output" describes the '
             "photo after that edit: the description with exactly that change. "
             f'Edit kinds: {mix}. Answer with JSON: {{"description": "...", "edits": [...]}}, '
             f"{n} edits.")
    return [{"role": "system", "content": pack.system.replace("{domain}", domain)},
            {"role": "user", "content": user, "images": [image]}]


def _match_key(text: str) -> str:
    """A caption up to case, spacing and punctuation, in any script ('Café,' = 'café')."""
    return " ".join(re.findall(r"\w+", text.lower()))


def match_inputs(items: list[dict[str, Any] | Reject],
                 given: list[tuple[int, str]]) -> list[dict[str, Any] | Reject]:
    """Pair a reply's triplets with the captions it was given, by their input text (up to
    case and punctuation): a matched triplet keeps the given caption verbatim and its
    `input_index`; an item whose input matches none is `input rewritten`, a given caption
    no item answers is `input skipped`. A reply rejected whole names all its captions."""
    indices = [index for index, _ in given]
    if all(isinstance(item, Reject) for item in items):
        return [Reject(r.reason, r.detail, {**r.data, "input_indices": indices})
                for r in items if isinstance(r, Reject)]
    free: dict[str, list[int]] = {}
    for pos, (_, text) in enumerate(given):
        free.setdefault(_match_key(text), []).append(pos)
    slots: list[int | None] = []
    for item in items:
        text = item.get("input") if isinstance(item, dict) else None
        options = free.get(_match_key(text)) if isinstance(text, str) else None
        slots.append(options.pop(0) if options else None)
    answered = {pos for pos in slots if pos is not None}
    unanswered = [pos for pos in range(len(given)) if pos not in answered]
    out: list[dict[str, Any] | Reject] = []
    for item, pos in zip(items, slots):
        if isinstance(item, Reject):
            out.append(item)
        elif pos is not None:
            index, text = given[pos]
            out.append({**item, "input": text, "input_index": index})
        else:  # stands for the next unanswered caption, if one is left
            data = dict(item) if isinstance(item, dict) else {"raw": repr(item)}
            got = data.get("input")
            stands = given[unanswered.pop(0)] if unanswered else None
            if stands is not None:
                data["input_index"] = stands[0]
            if not isinstance(got, str):
                out.append(Reject("invalid schema", "expected an object with a string "
                                  "'input'", data))
            elif stands is not None:
                out.append(Reject("input rewritten", f"given {stands[1]!r}, the reply has "
                                  f"{got!r}", data))
            else:
                out.append(Reject("input rewritten", f"{got!r} is none of the given captions",
                                  data))
    out += [Reject("input skipped", f"the reply has no triplet for {given[pos][1]!r}",
                   {"input": given[pos][1], "input_index": given[pos][0]})
            for pos in unanswered]
    return out


def used_inputs(work_dir: Path | None) -> set[int]:
    """The input captions the records on disk name: the ones a resumed run must not send
    again. A request that failed outright (no reply) used none, so they are sent again."""
    if work_dir is None or not work_dir.is_dir():
        return set()
    used: set[int] = set()
    for record in RecordStore(work_dir).read():
        if isinstance(record.get("input_index"), int):
            used.add(record["input_index"])
        if record.get("reason") != "request failed":
            used.update(i for i in record.get("input_indices") or () if isinstance(i, int))
    return used


def used_photos(work_dir: Path | None) -> set[str]:
    """The photos (resolved paths) the records on disk name: the ones a resumed run must not
    send again; like `used_inputs`, a photo whose request failed outright is sent again."""
    if work_dir is None or not work_dir.is_dir():
        return set()
    return {record["photo"] for record in RecordStore(work_dir).read()
            if isinstance(record.get("photo"), str) and record.get("reason") != "request failed"}


def _reply_json(reply: Reply, smaller: str) -> Any:
    """The decoded JSON of a reply, or a `Reject` saying why it is unusable (`smaller`: the
    option to lower when the reply ran out of tokens)."""
    snippet = (reply.text or "")[:300]
    if reply.refusal:
        return Reject("refused", reply.refusal[:300])
    if reply.finish == "length":
        return Reject("truncated reply", "the reply hit the token limit; raise max_tokens or "
                      f"lower {smaller}: {snippet}")
    if reply.finish == "content_filter":
        return Reject("refused", "content filter")
    try:
        return json.loads(reply.text or "")
    except json.JSONDecodeError as exc:
        return Reject("malformed JSON", f"{exc.msg} at {exc.pos}: {snippet}")


def parse_reply(reply: Reply) -> list[dict[str, Any] | Reject]:
    """Triplets from a reply, or one `Reject` that says why the reply was unusable."""
    snippet = (reply.text or "")[:300]
    data = _reply_json(reply, "per_request")
    if isinstance(data, Reject):
        return [data]
    if not isinstance(data, dict) or not isinstance(data.get("triplets"), list):
        return [Reject("invalid schema", f'expected {{"triplets": [...]}}: {snippet}')]
    if not data["triplets"]:
        return [Reject("empty reply", snippet)]
    return [_clean(item) for item in data["triplets"]]


# a description that declines instead of describing ("I'm sorry, I can't help with that")
_DECLINES = re.compile(r"^\W*(?:i['\u2019]?m sorry|i am sorry|sorry\b|i can(?:not|['\u2019]t)\b|"
                       r"i['\u2019]?m (?:not able|unable)|i am (?:not able|unable)|"
                       r"i won['\u2019]?t\b)", re.I)


def parse_photo_reply(reply: Reply) -> list[dict[str, Any] | Reject]:
    """Triplets from a reply about one photo, each with the photo's description as its
    input, or one `Reject` that says why the reply was unusable (a description that declines
    is `refused`, like a refusal)."""
    snippet = (reply.text or "")[:300]
    data = _reply_json(reply, "edits_per_photo")
    if isinstance(data, Reject):
        return [data]
    description = data.get("description") if isinstance(data, dict) else None
    if not isinstance(description, str) or not description.strip() or \
            not isinstance(data.get("edits"), list):
        return [Reject("invalid schema", f'expected {{"description": "...", "edits": [...]}}: '
                       f"{snippet}")]
    if _DECLINES.match(description):
        return [Reject("refused", description[:300])]
    if not data["edits"]:
        return [Reject("empty reply", snippet)]
    return [{"input": description, **{k: v for k, v in _clean(item).items() if k != "input"}}
            if isinstance(item, dict) else
            Reject("invalid schema", f"expected an edit object, got {type(item).__name__}",
                   {"input": description, "raw": repr(item)[:300]})
            for item in data["edits"]]


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
    # where the options live in a recipe, for the hints of errors (a filter that asks
    # through a generator sets its own)
    options_at = "captions.options"

    # --- what a plugin provides -----------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Make the client and fail fast (missing key, server down, model not there)."""

    @abstractmethod
    def send(self, messages: list[dict[str, str]], schema: dict[str, Any],
             max_tokens: int, seed: int, name: str = "triplets") -> Reply:
        """One request; raise `Retry` for transient failures, `EditkitError` for fatal ones.
        `name` is the schema's name, for an API that sends one (OpenAI's json_schema)."""

    def close(self) -> None:
        """Release the client; in-flight requests may fail, which is then ignored."""

    def review(self, items: list[dict[str, Any] | Reject]) -> list[dict[str, Any] | Reject]:
        """A last look at parsed triplets (moderation); the default keeps them all."""
        return items

    def extra_stats(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Stats computed from usage, like an estimated cost."""
        return {}

    # --- the shared loop -------------------------------------------------------------------

    def reply_tokens(self, captions: list[str] | None = None) -> int:
        """The reply budget: per triplet, plus room to copy given captions back (a token is
        about 4 characters; a caption appears twice, as input and edited as output)."""
        opts = self.options
        if opts.photos is not None:  # a description, then edits_per_photo edits of it
            return opts.max_tokens or opts.edits_per_photo * (90 if opts.annotate else 60) + 300
        copied = sum(len(c) for c in captions) // 2 if captions else 0
        return opts.max_tokens or (opts.per_request * (90 if opts.annotate else 60) + 200
                                   + copied)

    def generate(self, job: CaptionJob) -> Iterator[list[dict[str, Any] | Reject]]:
        opts = self.options
        pack = load_pack(opts.domain_pack)
        domain = opts.domain or pack.domain
        schema = photo_schema(opts.annotate) if opts.photos is not None else \
            triplet_schema(opts.annotate)
        per = opts.edits_per_photo if opts.photos is not None else opts.per_request
        usage = Usage.load(job.work_dir, job.stats)
        captions: list[str] = []
        unused: deque[int] = deque()
        photos: list[Path] = []
        unsent: deque[Path] = deque()
        if opts.input_captions is not None:
            from editkit.captions.files import read_captions

            captions = read_captions(opts.input_captions)
            used = used_inputs(job.work_dir)
            unused.extend(i for i in range(len(captions)) if i not in used)
        if opts.photos is not None:
            photos = [p.resolve() for p in list_photos(opts.photos)]
            answered = used_photos(job.work_dir)
            unsent.extend(p for p in photos if str(p) not in answered)
        self.connect()
        self.prepare_requests()
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
                   + (pending + len(inflight) * per) * rate < job.count):
                number = next(counter)
                rng = random.Random(f"editkit-llm:{job.seed}:{job.start}:{number}")
                given: list[tuple[int, str]] | None = None
                if opts.photos is not None:
                    if not unsent:
                        return  # every photo is sent
                    build = partial(build_photo_messages, pack, domain, opts.edits_per_photo,
                                    opts.examples, opts.annotate, rng)
                    inflight[pool.submit(self._photo_request, unsent.popleft(), build, schema,
                                         rng.randrange(2**31), usage)] = number
                    continue
                if opts.input_captions is None:
                    messages = build_messages(pack, domain, opts.per_request, opts.examples,
                                              opts.annotate, rng)
                elif unused:
                    given = [(i, captions[i]) for i in
                             (unused.popleft() for _ in range(min(opts.per_request,
                                                                  len(unused))))]
                    messages = build_edit_messages(pack, domain, [c for _, c in given],
                                                   opts.examples, opts.annotate, rng)
                else:
                    return  # every given caption is sent
                future = pool.submit(self._request, messages, schema, rng.randrange(2**31),
                                     usage, given)
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
                if not ready and not inflight and opts.photos is not None:
                    raise RunError(
                        f"captions: the {len(photos)} photos in {opts.photos} have all been "
                        f"sent, and {job.count - job.kept} more triplets are needed",
                        "add photos or lower captions.count; the triplets made are kept, and "
                        "running again resends only the photos whose request failed")
                if not ready and not inflight:  # only when the given captions ran out
                    raise RunError(
                        f"captions: the {len(captions)} captions in {opts.input_captions} "
                        f"have all been sent, and {job.count - job.kept} more triplets are "
                        "needed", "add captions to input_captions or lower captions.count; "
                        "the triplets made are kept, and running again resends only the "
                        "captions whose request failed")
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
            self.stop_requests()
            pool.shutdown(wait=False, cancel_futures=True)
            self.close()

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any], seed: int,
                 usage: Usage, given: list[tuple[int, str]] | None = None
                 ) -> list[dict[str, Any] | Reject]:
        """One request with its retries; the reply parsed into triplets or a reject, each
        naming the given captions it answers (when captions were given)."""
        items = self._attempts(messages, schema, seed, usage, given)
        if given is not None and len(items) == 1 and isinstance(items[0], Reject) and \
                items[0].reason == "request failed":
            return match_inputs(items, given)
        return items

    def _photo_request(self, photo: Path, build: Callable[[str], list[dict[str, Any]]],
                       schema: dict[str, Any], seed: int, usage: Usage
                       ) -> list[dict[str, Any] | Reject]:
        """One photo's request with its retries (none for a file that is not an image), every
        triplet and reject naming the photo."""
        named = {"photo": str(photo), "photo_name": photo.name}
        try:
            image = encode_image(read_photo(photo))
        except InputError as exc:
            return [Reject("unreadable photo", exc.message, named)]
        items = self._attempts(build(image), schema, seed, usage, None)
        return [Reject(item.reason, item.detail, {**item.data, **named})
                if isinstance(item, Reject) else {**item, **named} for item in items]

    def _attempts(self, messages: list[dict[str, str]], schema: dict[str, Any], seed: int,
                  usage: Usage, given: list[tuple[int, str]] | None
                  ) -> list[dict[str, Any] | Reject]:
        max_tokens = self.reply_tokens([c for _, c in given] if given else None)
        reply = self.ask(messages, schema, max_tokens, seed, usage)
        if reply is None:
            return []
        if isinstance(reply, Reject):
            return [reply]
        items = parse_photo_reply(reply) if self.options.photos is not None else \
            parse_reply(reply)
        if given is not None:
            items = match_inputs(items, given)
        return self.review(items)

    def prepare_requests(self) -> None:
        """Reset the stop flag and the pause a server's Retry-After sets for every request:
        once before a round of `ask` calls (from any number of threads)."""
        self._stop = threading.Event()
        self._pause_until = 0.0
        self._pause_lock = threading.Lock()

    def stop_requests(self) -> None:
        """End the round: requests waiting to retry give up (`ask` returns None)."""
        self._stop.set()

    def ask(self, messages: list[dict[str, Any]], schema: dict[str, Any], max_tokens: int,
            seed: int, usage: Usage, name: str | None = None) -> Reply | Reject | None:
        """One request with its retries (429, 5xx, timeouts; backoff with jitter, a
        Retry-After pausing every request): the `Reply`, a `Reject("request failed", why)`
        when the retries ran out or the response made no sense, or None once stopped.
        Fatal errors (`EditkitError`) propagate. `name` names the schema, where the API
        wants one (OpenAI's json_schema name; default: the plugin's). Thread-safe after
        `prepare_requests`."""
        opts = self.options
        last = ""
        for attempt in range(opts.max_retries + 1):
            self._wait_for_pause()
            if self._stop.is_set():
                return None
            try:
                reply = self.send(messages, schema, max_tokens, seed) if name is None else \
                    self.send(messages, schema, max_tokens, seed, name=name)
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
                    return None
                continue
            except Exception as exc:  # a reply the client could not make sense of
                usage.add(self.extra_stats, failed_requests=1)
                return Reject("request failed", f"unusable response: "
                              f"{type(exc).__name__}: {first_line(exc)}")
            usage.add(self.extra_stats, requests=1, prompt_tokens=reply.prompt_tokens,
                      completion_tokens=reply.completion_tokens)
            return reply
        usage.add(self.extra_stats, failed_requests=1)
        return Reject("request failed", f"{last} (after {opts.max_retries} retries)")

    def _wait_for_pause(self) -> None:
        with self._pause_lock:
            left = self._pause_until - time.monotonic()
        if left > 0:
            self._stop.wait(left)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, short enough for a record or an error."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
