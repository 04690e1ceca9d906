"""`editkit report`: a static page that opens in headless Chromium, fast at thousands of pairs."""

import re

from editkit.report import write_report
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
