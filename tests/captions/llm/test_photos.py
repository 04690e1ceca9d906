"""`photos`: a vision model describes each of the user's photos and writes edits of it."""

from collections import Counter

import pytest
from llm_helpers import kill_and_resume, recipe_file, records, refusal, run
from PIL import Image

from editkit.captions.llm import photo_schema
from editkit.errors import RunError
from editkit.testing.llmserver import LLMServer, request_images

FAST = {"backoff": 0.01, "max_backoff": 0.05}
# (name, size, colour): every photo has its own size, so a request shows which it carried
PHOTOS = [("a.png", (64, 48), "red"), ("b.jpg", (40, 30), "green"),
          ("c.webp", (50, 50), "blue"), ("d.png", (30, 60), "yellow"),
          ("e.png", (72, 24), "white"), ("f.png", (33, 33), "purple")]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def photo_folder(tmp_path, photos=PHOTOS, broken=()):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size, colour in photos:
        Image.new("RGB", size, colour).save(folder / name)
    for name in broken:
        (folder / name).write_bytes(b"these bytes are not an image")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def options(use, server, folder, **extra):
    where = {"base_url": server.url + "/v1"} if use == "openai" else {"host": server.url}
    return {**where, "photos": str(folder), "domain_pack": "streetview", "edits_per_photo": 2,
            "concurrency": 1, **FAST, **extra}


def description(size, colour):
    return f"a {size[0]}x{size[1]} photo, mostly {colour}"


def sent(server):
    """The size of the photo each chat request carried, request by request."""
    return [request_images(call["body"]["messages"])[0].size
            for call in server.chat_requests()]


def size_of(name):
    return next(size for n, size, _ in PHOTOS if n == name)


@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_triplets_carry_their_photo_and_the_models_description_of_it(tmp_path, use):
    folder = photo_folder(tmp_path)
    with LLMServer() as server:
        summary = run(recipe_file(tmp_path, use, 6, options(use, server, folder)))["captions"]
        calls = server.chat_requests()
    assert summary["kept"] == 6 and summary["rejected"] == 0
    kept = records(tmp_path)
    assert [r["photo_name"] for r in kept] == ["a.png", "a.png", "b.jpg", "b.jpg", "c.webp",
                                               "c.webp"]
    for record in kept:
        name, size, colour = next(p for p in PHOTOS if p[0] == record["photo_name"])
        assert record["photo"] == str((folder / name).resolve())
        assert record["input"] == description(size, colour)  # verbatim, one per photo
        assert record["output"].startswith(description(size, colour) + ", with ")
        assert record["edit_kind"] == "add" and record["region"] == "foreground"
    assert len({r["edit"] for r in kept if r["photo_name"] == "a.png"}) == 2
    assert len(calls) == 3  # one photo a request, the text file skipped
    body = calls[0]["body"]
    system, user = body["messages"]
    if use == "openai":  # OpenAI's content parts: the prompt, then the photo as a data URL
        text, image = user["content"]
        assert text["type"] == "text" and image["type"] == "image_url"
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        prompt = text["text"]
        fmt = body["response_format"]["json_schema"]
        assert fmt["strict"] is True
        schema = fmt["schema"]
    else:  # Ollama's images beside the prompt
        assert len(user["images"]) == 1
        prompt = user["content"]
        schema = body["format"]
    assert "2 edits one can make to THIS photo" in prompt and '{"input"' in prompt
    assert "street" in system["content"]
    assert schema == photo_schema(True)


def test_the_photo_schema_is_ready_for_strict_mode():
    def objects(schema):
        if schema.get("type") == "object":
            yield schema
        for sub in [*schema.get("properties", {}).values(), schema.get("items")]:
            if sub:
                yield from objects(sub)

    for annotate in (True, False):
        schema = photo_schema(annotate)
        found = list(objects(schema))
        assert len(found) == 2
        for obj in found:
            assert obj["additionalProperties"] is False
            assert obj["required"] == list(obj["properties"])
    assert list(photo_schema(False)["properties"]["edits"]["items"]["properties"]) == [
        "edit", "output"]


@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_a_broken_photo_a_refusal_and_bad_replies_are_rejects_and_the_run_finishes(tmp_path,
                                                                                      use):
    folder = photo_folder(tmp_path, broken=["0-broken.png"])
    faults = ["500", "refusal", "malformed", "truncated"]
    with LLMServer(faults=faults) as server:
        summary = run(recipe_file(tmp_path, use, 4, options(use, server, folder)))["captions"]
        # no request for the broken file; the 500 retried; f.png may be asked for ahead
        assert sent(server)[:6] == [size_of("a.png")] * 2 + [
            size_of(n) for n in ("b.jpg", "c.webp", "d.png", "e.png")]
    assert summary["kept"] == 4
    assert summary["rejects"] == {"unreadable photo": 1, "refused": 1, "malformed JSON": 1,
                                  "truncated reply": 1}
    rejected = [r for r in records(tmp_path) if r["status"] == "rejected"]
    assert [(r["photo_name"], r["reason"]) for r in rejected] == [
        ("0-broken.png", "unreadable photo"), ("a.png", "refused"),
        ("b.jpg", "malformed JSON"), ("c.webp", "truncated reply")]
    assert "0-broken.png is not a readable image" in rejected[0]["detail"]
    assert rejected[0]["photo"] == str((folder / "0-broken.png").resolve())
    refused = rejected[1]["detail"]
    assert refused.startswith("I'm sorry") and "edits_per_photo" in rejected[3]["detail"]
    assert [r["photo_name"] for r in records(tmp_path) if r["status"] == "kept"] == [
        "d.png", "d.png", "e.png", "e.png"]


def test_an_image_the_server_cannot_decode_is_answered_400(tmp_path):
    import openai

    with LLMServer() as server:
        client = openai.OpenAI(api_key="sk-test", base_url=server.url + "/v1", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="unsupported image"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": [
                    {"type": "text", "text": "Write 2 edits one can make to THIS photo"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
        client.close()
        assert [c["fault"] for c in server.chat_requests()] == ["invalid image"]


@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_a_rerun_sends_only_unanswered_photos_and_stops_when_they_run_out(tmp_path, use):
    folder = photo_folder(tmp_path)
    opts = options(use, server := LLMServer(faults=["500"]), folder, max_retries=0,
                   max_failed_requests=3)
    with server:
        run(recipe_file(tmp_path, use, 3, opts))
        first = records(tmp_path)
        assert [(r["photo_name"], r["status"]) for r in first] == [
            ("a.png", "rejected"), ("b.jpg", "kept"), ("b.jpg", "kept"), ("c.webp", "kept")]
        assert first[0]["reason"] == "request failed"
        before = len(sent(server))
        with pytest.raises(RunError, match=r"the 6 photos in .* have all been sent, and 3 "
                           "more triplets are needed") as info:
            run(recipe_file(tmp_path, use, 14, opts))
        assert "add photos or lower captions.count" in info.value.hint
        # the failed photo again, then the photos no record names; b and c are not resent
        assert sent(server)[before:] == [size_of(n) for n in ("a.png", "d.png", "e.png",
                                                              "f.png")]
        again = len(sent(server))
        with pytest.raises(RunError, match="have all been sent"):
            run(recipe_file(tmp_path, use, 14, opts))
        assert len(sent(server)) == again  # nothing left to send
    kept = [r for r in records(tmp_path) if r["status"] == "kept"]
    # c.webp's second edit came back with its first but was not needed; it is not asked again
    assert Counter(r["photo_name"] for r in kept) == {"a.png": 2, "b.jpg": 2, "c.webp": 1,
                                                      "d.png": 2, "e.png": 2, "f.png": 2}
    for record in kept:
        _, size, colour = next(p for p in PHOTOS if p[0] == record["photo_name"])
        assert record["input"] == description(size, colour)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such folder"),
    (lambda d: (d / "a.png").write_bytes(b"x") and d / "a.png", "not a folder of photos"),
    (lambda d: [(d / "empty").mkdir(), (d / "empty" / "a.txt").write_text("x")] and
     d / "empty", "it holds no images"),
])
def test_validation_refuses_a_missing_or_imageless_folder_in_one_line(tmp_path, make, message):
    where, said = refusal(recipe_file(tmp_path, "openai", 5, {"photos": str(make(tmp_path))}))
    assert where == "captions.options.photos" and message in said


def test_validation_refuses_photos_with_input_captions(tmp_path):
    (tmp_path / "captions.txt").write_text("a red car\n")
    where, said = refusal(recipe_file(tmp_path, "ollama", 5, {
        "photos": str(photo_folder(tmp_path)), "input_captions": str(tmp_path / "captions.txt")}))
    assert where == "captions.options.photos" and "input_captions is set too" in said


@pytest.mark.slow
@pytest.mark.parametrize("use", ["openai", "ollama"])
def test_killed_stage_resumes_without_losing_or_doubling_a_photo(cli, tmp_path, use):
    photos = [(f"p{k:02d}.png", (20 + k, 20), "red") for k in range(16)]
    folder = photo_folder(tmp_path, photos)
    with LLMServer(delay=0.2) as server:
        path = recipe_file(tmp_path, use, 30, options(use, server, folder, concurrency=2))
        before, result = kill_and_resume(cli, tmp_path, path)
        assert 0 < before < 30
        assert result.returncode == 0, result.stderr
        made = server.triplets
    recs = records(tmp_path)
    kept = [r for r in recs if r["status"] == "kept"]
    assert len(kept) == 30 and len({r["id"] for r in recs}) == len(recs)
    per_photo = Counter(r["photo_name"] for r in recs)
    assert max(per_photo.values()) <= 2  # no photo answered twice into the records
    for record in kept:  # one description a photo, from its own image
        assert record["input"] == description((int(record["photo_name"][1:3]) + 20, 20), "red")
    # the bound of a killed run: the requests in flight and the replies not yet written
    assert made <= 30 + 2 * 2 * 2
