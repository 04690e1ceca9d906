"""Open a static HTML page in headless Chromium and say what happened: did every image
render (naturalWidth > 0), did any script fail, what reached the console.

The page is copied beside itself with lazy loading turned off (so every image loads without
scrolling) and a probe script that waits for the `load` event and writes its findings into
the DOM, which `--dump-dom` prints. Console messages come from Chromium's own log
(`--enable-logging=stderr`), so errors the probe cannot see (a failed resource) count too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href))));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute("src"); });
  var out = document.createElement("pre");
  out.id = "__probe";
  out.textContent = JSON.stringify({images: imgs.length, broken: broken,
                                    errors: window.__errors, title: document.title,
                                    width: window.innerWidth,
                                    scroll_width: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--allow-file-access-from-files",
         "--virtual-time-budget=30000", "--dump-dom"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("Chromium is not installed (apt-get install -y chromium)")


def open_page(page: str | Path, timeout: float = 120,
              window: tuple[int, int] | None = None) -> dict[str, Any]:
    """{images, broken, errors, title, width, scroll_width, console} for `page`, as Chromium
    saw it in a window of `window` (width, height) pixels (a phone's 390x844, say)."""
    page = Path(page).resolve()
    text = page.read_text("utf-8").replace('loading="lazy"', 'loading="eager"')
    head = text.find("<head>")
    probe_page = page.with_name(f".probe-{page.name}")
    probe_page.write_text(text[:head + 6] + PROBE + text[head + 6:], "utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="editkit-chromium-") as profile:
            size = [f"--window-size={window[0]},{window[1]}"] if window else []
            done = subprocess.run([chromium(), *FLAGS, *size, f"--user-data-dir={profile}",
                                   probe_page.as_uri()], capture_output=True, text=True,
                                  timeout=timeout)
    finally:
        probe_page.unlink(missing_ok=True)
    match = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout, re.S)
    if match is None:
        raise RuntimeError(f"the page never finished loading (exit {done.returncode}): "
                           f"{done.stderr[-2000:]}")
    import html

    result = json.loads(html.unescape(match.group(1)))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result
