"""`editkit report`: a static page that opens in headless Chromium, fast at thousands of pairs."""

import re

from editkit.report import write_report
from editkit.run.folder import RecordStore
from editkit.testing.browser import open_page
from editkit.testing.pairs import synthetic_run


def folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_report_of_2000_pairs_is_under_5_mb_and_loads_in_chromium(tmp_path):
    run = synthetic_run(tmp_path / "run", triplets=1000, samples=2, size=96)
    page = write_report(run)
    size = folder_bytes(page.parent)
    assert size < 5_000_000, f"{size} bytes"
    html = page.read_text()
    assert html.count('loading="lazy"') == html.count("<img ") == 1960  # 40 render rejects
    assert "render: black image (safety checker or NaN)" in html
    assert re.search(r"0-clip: clip image similarity 0\.\d{3} &lt; min_image 0\.7", html)
    seen = open_page(page)
    assert seen["images"] == 1960 and seen["broken"] == []
    assert seen["errors"] == [] and seen["console"] == []
    assert seen["title"] == "editkit report: synthetic"


def test_report_reuses_thumbnails_and_survives_broken_images(tmp_path):
    run = synthetic_run(tmp_path / "run", triplets=3, samples=2, size=32)
    (run / "render/images/000001-0-after.png").write_bytes(b"not a png")
    page = write_report(run, tmp_path / "out")
    html = page.read_text()
    assert html.count("image unreadable") == 1
    assert (tmp_path / "out/thumbs/pairs/000000-0.jpg").exists()
    before = (tmp_path / "out/thumbs/pairs/000000-0.jpg").stat().st_mtime_ns
    write_report(run, tmp_path / "out")
    assert (tmp_path / "out/thumbs/pairs/000000-0.jpg").stat().st_mtime_ns == before
    seen = open_page(page)
    assert seen["broken"] == [] and seen["errors"] == [] and seen["console"] == []


def test_the_probe_catches_broken_pages(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><title>x</title></head><body>'
                    '<img src="missing.png"><script>nope();</script></body></html>')
    seen = open_page(page)
    assert seen["broken"] == ["missing.png"]
    assert any("nope is not defined" in e for e in seen["errors"])
    assert any("nope is not defined" in line for line in seen["console"])


def test_report_command_says_what_is_wrong(cli, tmp_path):
    result = cli("report", tmp_path)
    assert result.returncode == 1
    assert "is not a run folder (no manifest.json)" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_fits_a_phone_and_lists_stages_in_pipeline_order(tmp_path):
    import json

    run = synthetic_run(tmp_path / "run", triplets=20, samples=2, size=64)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"] = {  # written in the order a resumed run may leave them
        "train": {"result": {"weights": "train/final"}, "stats": {"steps": 300},
                  "seconds": 754.2},
        "captions": {"kept": 20, "rejects": {"duplicate": 3}, "seconds": 2.04},
        "render": {"pairs": 40, "rejected": 0, "rejects": {}, "seconds": 61.0},
        "filters": {"scored": 40, "kept": 31, "rejects": {"clip: min_image": 9},
                    "seconds": 4.5}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    page = write_report(run)
    html = page.read_text()
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in html
    order = [html.index(f"<tr><td>{s}</td>") for s in ("captions", "render", "filters", "train")]
    assert order == sorted(order)
    assert "<td>40 pairs (80 images)</td>" in html and "<td>duplicate 3</td>" in html
    assert "12 min 34 s" in html and "2.0 s" in html
    rendered = RecordStore(run / "render").read()
    kept = sum(r["status"] == "kept" for r in rendered)
    rejected = f", {len(rendered) - kept} rejected" if len(rendered) > kept else ""
    assert f"{kept} pairs rendered ({2 * kept} images){rejected}," in html
    # headless Chromium's narrowest window is 500 px: nothing may overflow it sideways
    seen = open_page(page, window=(390, 844))
    assert seen["width"] <= 500 and seen["scroll_width"] <= seen["width"], seen
    assert seen["broken"] == [] and seen["errors"] == []
