"""A local HTTP server that speaks the OpenAI and Ollama protocols, with scripted faults.

Tests and benchmarks point the real `openai` and `ollama` clients at it. Each request takes
the next entry of `faults` (thread-safe; "ok" when the script is empty), so a test says
exactly what the server does: "429" (with Retry-After), "500", "quota", "401", "404",
"malformed", "truncated", "refusal", "slow", "nochoices" (a 200 without choices);
"tags-500" is for Ollama's model listing. Good replies hold unique, valid triplets (the
running request number is in every caption), so losing or repeating one is visible.
A request that gives captions to edit (`input_captions`: one JSON string a line) is answered
with one triplet per caption, its input copied back; the faults "rewrite" (the first input
reworded), "skip" (the last caption left out) and "recase" (inputs upper-cased) misbehave.
"down" answers well and then stops listening, so every later connection is refused: a server
that was up and went down.
A request to score an edit pair (its schema has `PAIR_SCORES`; images before and after) is
answered from the two images it carries, decoded (`request_images`), so the scores are about
what was sent: instruction 1 when after is (nearly) before, preserved lower the more of the
image changed, quality 1 when the after image is one flat colour; the reason says what it saw.
The faults apply to these requests too.
A request about one photo (an image, and a prompt asking for "N edits one can make to THIS
photo") is answered from the decoded image: the description gives its size and dominant
colour ("a 64x48 photo, mostly red"), and each of the N edits adds one thing to it. The
faults apply to it too; "refusal" is a description that declines, for Ollama (OpenAI's
answer has a `refusal`). A request whose image does not decode is answered 400.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OLLAMA_MODELS = ["llama3.2:latest", "qwen2.5:7b", "llama3.2-vision:latest"]
# a request whose schema has these properties asks to score an edit pair (`use: vlm`)
PAIR_SCORES = {"instruction", "preserved", "quality"}


class LLMServer:
    """`with LLMServer(delay=0.2) as server:` then use `server.url` (OpenAI: `url + "/v1"`)."""

    def __init__(self, delay: float = 0.0, faults: list[str] | None = None,
                 retry_after: str = "0.05", slow: float = 2.0):
        self.delay = delay
        self.faults = list(faults or [])
        self.retry_after = retry_after
        self.slow = slow
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []  # one entry per request: path, fault, body
        self.triplets = 0
        self.flagged: set[int] = set()  # triplet numbers the moderation endpoint flags
        self.concurrent = 0
        self.max_concurrent = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LLMServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening: later connections are refused (safe to call twice, and from a
        request's handler thread)."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self, path: str, body: Any) -> str:
        with self.lock:
            fault = self.faults.pop(0) if self.faults else "ok"
            self.log.append({"path": path, "fault": fault, "body": body,
                             "t": time.monotonic()})
            return fault

    def edit_triplets(self, captions: list[str], fault: str) -> list[dict[str, Any]]:
        """One good triplet per given caption (an added red bicycle), then the fault."""
        with self.lock:
            self.triplets += len(captions)
        out = [{"input": c.upper() if fault == "recase" else c,
                "edit": "add a red bicycle",
                "output": f"{c.rstrip('. ')} with a red bicycle in front",
                "edit_kind": "add", "words": ["red", "bicycle"], "region": "foreground"}
               for c in captions]
        if fault == "rewrite" and out:
            out[0]["input"] = "a nicer version of " + out[0]["input"]
        if fault == "skip" and out:
            out.pop()
        return out

    def make_triplets(self, n: int) -> list[dict[str, Any]]:
        with self.lock:
            start, self.triplets = self.triplets, self.triplets + n
        return [{"input": f"a quiet street number {k} with a wooden bench",
                 "edit": "add a red bicycle next to the bench",
                 "output": f"a quiet street number {k} with a wooden bench and a red bicycle",
                 "edit_kind": "add", "words": ["red", "bicycle"], "region": "foreground"}
                for k in range(start, start + n)]

    def photo_reply(self, image: Any, n: int, fault: str) -> dict[str, Any]:
        """A photo's description (its size and dominant colour) and `n` edits, each adding
        one thing to it; "refusal" declines."""
        if fault == "refusal":
            return {"description": "I'm sorry, I can't help with that.", "edits": []}
        description = f"a {image.width}x{image.height} photo, mostly {colour_name(image)}"
        with self.lock:
            self.triplets += n
        return {"description": description, "edits": [
            {"edit": f"add {thing}", "output": f"{description}, with {thing}",
             "edit_kind": "add", "words": thing.split()[1:], "region": "foreground"}
            for thing in (PHOTO_THINGS * (n // len(PHOTO_THINGS) + 1))[:n]]}

    def chat_requests(self) -> list[dict[str, Any]]:
        return [e for e in self.log if e["path"] in ("/v1/chat/completions", "/api/chat")]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms stall

            def log_message(self, *args: Any) -> None:
                pass

            def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None
                          ) -> None:
                raw = (data if isinstance(data, str) else json.dumps(data)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if getattr(self, "going_down", False):
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    with server.lock:  # only "tags-*" faults are meant for the listing
                        fault = server.faults.pop(0) if server.faults and \
                            server.faults[0].startswith("tags-") else "ok"
                        server.log.append({"path": self.path, "fault": fault, "body": None,
                                           "t": time.monotonic()})
                    if fault == "tags-500":
                        return self.send_json(500, {"error": "internal error"})
                    return self.send_json(200, {"models": [
                        {"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z",
                         "size": 1000, "digest": "0" * 64, "details": {"format": "gguf"}}
                        for m in OLLAMA_MODELS]})
                self.send_json(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client hung up mid-request (a closed client)
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                if self.path in ("/v1/chat/completions", "/api/chat") and \
                        not isinstance(body.get("messages"), list):
                    return self.send_json(400, {"error": "messages is required"})
                try:
                    request_images(body.get("messages") or [])
                except (OSError, ValueError) as exc:  # the real servers answer 400
                    with server.lock:
                        server.log.append({"path": self.path, "fault": "invalid image",
                                           "body": body, "t": time.monotonic()})
                    if self.path.startswith("/v1/"):
                        return self.openai_error(400, "invalid_image_format", "You uploaded "
                                                 "an unsupported image. Please make sure "
                                                 "your image is valid.")
                    return self.send_json(400, {"error": f"invalid image input: {exc}"})
                with server.lock:
                    server.concurrent += 1
                    server.max_concurrent = max(server.max_concurrent, server.concurrent)
                try:
                    if self.path == "/v1/chat/completions":
                        self.openai_chat(body)
                    elif self.path == "/v1/moderations":
                        self.openai_moderations(body)
                    elif self.path == "/api/chat":
                        self.ollama_chat(body)
                    else:
                        self.send_json(404, {"error": "not found"})
                finally:
                    with server.lock:
                        server.concurrent -= 1

            def wanted(self, messages: list[dict[str, Any]]) -> int:
                match = re.search(r"Write (\d+) new", messages[-1]["content"])
                return int(match.group(1)) if match else 1

            def reply_triplets(self, messages: list[dict[str, Any]], fault: str
                               ) -> list[dict[str, Any]]:
                """The given captions' triplets, or `wanted` new ones ("down": this is the
                last answer; the server stops listening before sending it)."""
                if fault == "down":
                    self.going_down = True
                    server.stop()
                given = [json.loads(line) for line in messages[-1]["content"].splitlines()
                         if line.startswith('"')]
                if given:
                    return server.edit_triplets(given, fault)
                return server.make_triplets(self.wanted(messages))

            def reply_content(self, body: dict[str, Any], fault: str) -> str:
                """The JSON a good reply holds: a pair's scores when the request asks for
                them (its schema has `PAIR_SCORES`), a photo's description and edits when
                it asks for them (`photo_edits`), else triplets."""
                edits = photo_edits(body["messages"])
                if edits is None and \
                        not PAIR_SCORES <= set(reply_schema(body).get("properties") or ()):
                    return json.dumps({"triplets": self.reply_triplets(body["messages"],
                                                                       fault)})
                if fault == "down":
                    self.going_down = True
                    server.stop()
                if edits is not None:
                    return json.dumps(server.photo_reply(request_images(body["messages"])[0],
                                                         edits, fault))
                return json.dumps(score_pair(request_images(body["messages"])))

            def openai_error(self, status: int, code: str, message: str,
                             headers: dict[str, str] | None = None) -> None:
                self.send_json(status, {"error": {"message": message, "type": code,
                                                  "param": None, "code": code}}, headers)

            def openai_chat(self, body: dict[str, Any]) -> None:
                fault = server.next_fault(self.path, body)
                time.sleep(server.slow if fault == "slow" else server.delay)
                if fault == "429":
                    return self.openai_error(429, "rate_limit_exceeded", "Rate limit reached",
                                             {"Retry-After": server.retry_after})
                if fault == "quota":
                    return self.openai_error(429, "insufficient_quota", "You exceeded your "
                                             "current quota, please check your plan")
                if fault == "500":
                    return self.openai_error(500, "server_error", "The server had an error")
                if fault == "401":
                    return self.openai_error(401, "invalid_api_key", "Incorrect API key")
                if fault == "404":
                    return self.openai_error(404, "model_not_found", f"The model "
                                             f"'{body.get('model')}' does not exist")
                if fault == "nochoices":
                    return self.send_json(200, {"id": "x", "object": "chat.completion"})
                content: str | None = self.reply_content(body, fault)
                finish, refusal = "stop", None
                if fault == "malformed":
                    content = '{"triplets": [{"input": "a street", "edit": '
                elif fault == "truncated":
                    content, finish = content[: len(content) // 2], "length"
                elif fault == "refusal":
                    content, refusal = None, "I'm sorry, I can't help with that."
                self.send_json(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                                 "message": {"role": "assistant", "content": content,
                                             "refusal": refusal}}],
                    "usage": {"prompt_tokens": 500, "completion_tokens": 300,
                              "total_tokens": 800}})

            def openai_moderations(self, body: dict[str, Any]) -> None:
                server.next_fault(self.path, body)
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                results = []
                for text in texts:
                    flagged = any(f"number {k} " in text for k in server.flagged)
                    results.append({"flagged": flagged,
                                    "categories": {"violence": flagged, "sexual": False},
                                    "category_scores": {"violence": 0.9 if flagged else 0.0,
                                                        "sexual": 0.0}})
                self.send_json(200, {"id": "modr-test", "model": body.get("model"),
                                     "results": results})

            def ollama_chat(self, body: dict[str, Any]) -> None:
                fault = server.next_fault(self.path, body)
                time.sleep(server.slow if fault == "slow" else server.delay)
                if body.get("model") not in OLLAMA_MODELS and \
                        f"{body.get('model')}:latest" not in OLLAMA_MODELS or fault == "404":
                    return self.send_json(404, {"error": f"model \"{body.get('model')}\" not "
                                                "found, try pulling it first"})
                if fault == "500":
                    return self.send_json(500, {"error": "llama runner process has terminated"})
                if fault == "429":
                    return self.send_json(503, {"error": "server busy, please try again"})
                content = self.reply_content(body, fault)
                done_reason = "stop"
                if fault == "malformed":
                    content = "{\"triplets\": [ oops"
                elif fault == "truncated":
                    content, done_reason = content[: len(content) // 2], "length"
                self.send_json(200, {
                    "model": body.get("model"), "created_at": "2026-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": content}, "done": True,
                    "done_reason": done_reason, "prompt_eval_count": 400, "eval_count": 250,
                    "options_seen": body.get("options")})

        return Handler


def reply_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema a chat request constrains its reply to (OpenAI or Ollama), or {}."""
    schema = body.get("format") or ((body.get("response_format") or {}).get("json_schema")
                                    or {}).get("schema")
    return schema if isinstance(schema, dict) else {}


def request_images(messages: list[dict[str, Any]]) -> list[Any]:
    """The images a chat request carries, in order, as RGB PIL images: Ollama's `images`
    (base64) and OpenAI's `image_url` content parts (data URLs)."""
    import base64
    import io

    from PIL import Image

    encoded: list[str] = []
    for message in messages:
        encoded += message.get("images") or []
        content = message.get("content")
        if isinstance(content, list):
            encoded += [part["image_url"]["url"].split(",", 1)[-1] for part in content
                        if isinstance(part, dict) and part.get("type") == "image_url"]
    return [Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB") for b64 in encoded]


def score_pair(images: list[Any]) -> dict[str, Any]:
    """Scores (1 to 10) of an edit from its before and after images, by looking at them:
    how much changed (a pixel changed when a channel moved by more than 24) and whether
    the after image is one flat colour."""
    import numpy as np

    if len(images) != 2:
        return {"instruction": 1, "preserved": 1, "quality": 1,
                "reason": f"expected two images (before, after), got {len(images)}"}
    before, after = images
    a = np.asarray(after, dtype=np.float32)
    b = np.asarray(before.resize(after.size), dtype=np.float32)
    changed = float((np.abs(a - b).max(axis=2) > 24).mean())
    flat = float(a.reshape(-1, 3).std(axis=0).max()) < 2.0
    seen = ["after is the before image unchanged" if changed < 0.005 else
            f"{changed:.0%} of the image changed"]
    if flat:
        seen.append("the after image is one flat colour "
                    f"{tuple(int(v) for v in a.reshape(-1, 3).mean(axis=0))}")
    return {"instruction": 1 if changed < 0.005 else 8,
            "preserved": max(1, min(10, round(10 - 10 * changed))),
            "quality": 1 if flat else 8, "reason": "; ".join(seen)}


# what the edits of a photo add, in turn
PHOTO_THINGS = ["a wooden bench", "a street lamp", "a potted plant", "a small dog",
                "a parked bicycle", "a mailbox", "a sleeping cat", "a paper lantern",
                "a flock of birds", "a kite", "a stone fountain", "a picnic basket",
                "a garden gnome", "a wind chime", "a birdhouse", "a hammock", "a snowman",
                "a scarecrow", "a lighthouse", "a hot air balloon"]
COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
           "red": (200, 30, 30), "orange": (240, 140, 20), "yellow": (235, 215, 40),
           "green": (40, 160, 60), "blue": (40, 70, 210), "purple": (130, 50, 160),
           "brown": (120, 75, 40), "pink": (240, 150, 190)}


def photo_edits(messages: list[dict[str, Any]]) -> int | None:
    """How many edits a request about one photo asks for (it carries an image, and its last
    turn asks for "N edits one can make to THIS photo"), else None."""
    content = messages[-1].get("content") if messages else None
    text = content if isinstance(content, str) else " ".join(
        part.get("text", "") for part in content or () if isinstance(part, dict))
    match = re.search(r"(\d+) edits one can make to THIS photo", text)
    has_image = any(m.get("images") or isinstance(m.get("content"), list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
        for m in messages)
    return int(match.group(1)) if match and has_image else None


def colour_name(image: Any) -> str:
    """The name in `COLOURS` nearest to most of the image's pixels."""
    from collections import Counter

    pixels = image.convert("RGB").resize((16, 16)).tobytes()
    names = Counter(min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(
        pixels[i:i + 3], COLOURS[name]))) for i in range(0, len(pixels), 3))
    return names.most_common(1)[0][0]


class ServerProcess:
    """An `LLMServer` in its own process, so a benchmark's client does not share the GIL
    with the server it measures: `with ServerProcess(delay=0.2) as url: ...`."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.proc: Any = None

    def __enter__(self) -> str:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "editkit.testing.llmserver", "--delay", str(self.delay)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"the LLM test server did not start (said {line!r})")
        return line

    def __exit__(self, *exc: Any) -> None:
        self.proc.stdin.close()  # the server stops when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


def main() -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="serve the OpenAI and Ollama protocols "
                                     "until stdin closes; prints the URL first")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with LLMServer(delay=args.delay) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
