"""`editkit report RUN`: one static HTML page that shows what a run made.

No server and no external assets: `index.html` plus small JPEG thumbnails beside it, every
image lazy-loaded with its size in the markup, so a run of thousands of pairs opens fast.
The page shows each pair (before/after, captions, instruction, scores, kept or the first
reason it was rejected), the statistics of every filter, the evaluation table with example
edits, and the trainer's samples (`train/samples/`). Thumbnails are made once and reused.
"""

from __future__ import annotations

import html
import json
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from editkit.errors import InputError
from editkit.run.folder import IMAGE_SUFFIXES, RecordStore, atomic_write_text, filter_folders
from editkit.run.recipe import STAGES

PIPELINE = STAGES
EVAL_EXAMPLES = 12
TRAIN_SAMPLES = 64
JPEG_QUALITY = 65

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.rejected td{background:#fff4f4}.why{color:#a00}.ok{color:#070}
.cap{color:#555;font-size:12px}.sc{font-size:12px;color:#333;white-space:nowrap}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;font-size:12px}
img{background:#eee;display:block;max-width:100%;height:auto}
table{display:block;max-width:100%;overflow-x:auto}
@media (max-width:600px){body{margin:.6em;font-size:15px}td,th{padding:3px 4px}}
"""

SCRIPT = """
(function () {
  var show = document.getElementById("show"), find = document.getElementById("find");
  var rows = document.querySelectorAll("#pairs tbody tr");
  function apply() {
    var want = show.value, text = find.value.toLowerCase(), shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var ok = (want === "all" || r.className === want) &&
               (!text || r.textContent.toLowerCase().indexOf(text) >= 0);
      r.style.display = ok ? "" : "none";
      if (ok) shown++;
    }
    document.getElementById("count").textContent = shown + " shown";
  }
  show.addEventListener("change", apply);
  find.addEventListener("input", apply);
  apply();
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class Thumbnails:
    """JPEG thumbnails under `folder`, made once (remade when the source is newer)."""

    def __init__(self, folder: Path, page_dir: Path, size: int):
        self.folder = folder
        self.page_dir = page_dir
        self.size = size
        self.made = 0

    def tag(self, name: str, sources: list[Path], alt: str) -> str:
        """An <img> of `sources` side by side, or a note when one cannot be read."""
        from PIL import Image

        target = self.folder / f"{name}.jpg"
        try:
            fresh = target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime
                                            for s in sources)
            if not fresh:
                parts = []
                for source in sources:
                    with Image.open(source) as image:
                        image = image.convert("RGB")
                        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
                        parts.append(image)
                sheet = Image.new("RGB", (sum(p.width for p in parts) + 2 * (len(parts) - 1),
                                          max(p.height for p in parts)), "white")
                x = 0
                for part in parts:
                    sheet.paste(part, (x, 0))
                    x += part.width + 2
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                sheet.save(tmp, "JPEG", quality=JPEG_QUALITY, optimize=True)
                os.replace(tmp, target)
                self.made += 1
                width, height = sheet.size
            else:
                with Image.open(target) as done:
                    width, height = done.size
        except (OSError, ValueError) as exc:
            return f'<span class="why">image unreadable: {esc(exc)}</span>'
        src = os.path.relpath(target, self.page_dir).replace(os.sep, "/")
        return (f'<img src="{esc(src)}" width="{width}" height="{height}" loading="lazy" '
                f'alt="{esc(alt)}">')


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 thumb_size: int = 80) -> Path:
    """Write `index.html` (and `thumbs/`) for the run in `run_dir`; returns the page."""
    run = Path(run_dir)
    if not (run / "manifest.json").is_file() and not (run / "render").is_dir():
        raise InputError(f"{run} is not a run folder (no manifest.json)",
                         "pass the output folder of editkit run")
    page_dir = Path(out) if out else run / "report"
    page_dir.mkdir(parents=True, exist_ok=True)
    thumbs = Thumbnails(page_dir / "thumbs", page_dir, thumb_size)
    manifest = _json(run / "manifest.json") or {}
    pairs = RecordStore(run / "render").read() if (run / "render").is_dir() else []
    filters = _filter_records(run)
    splits = _splits(run)
    title = f"editkit report: {manifest.get('recipe') or run.name}"
    sections = [
        f"<h1>{esc(title)}</h1>",
        _overview(manifest, pairs, filters),
        _filter_stats(filters),
        _evaluation(run, thumbs),
        _judged(run, thumbs),
        _training_samples(run, thumbs),
        _pairs_table(run, pairs, filters, splits, thumbs),
    ]
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(s for s in sections if s)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
    atomic_write_text(page_dir / "index.html", page)
    return page_dir / "index.html"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _filter_records(run: Path) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """[(folder name like 0-clip, {pair id: record})] in the order the filters ran."""
    return [(d.name, {r["id"]: r for r in RecordStore(d).read()}) for d in filter_folders(run)]


def _splits(run: Path) -> dict[str, str]:
    """{pair id: "train" or "test"} from the run's dataset."""
    return {key: row["split"] for key, row in _dataset_rows(run / "dataset").items()}


def _dataset_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """{pair id: row} of the dataset in `folder`, in either layout (image paths absolute)."""
    from editkit.run.folder import is_dataset, read_dataset

    return ({str(r["id"]): r for r in read_dataset(folder).rows}
            if is_dataset(folder) else {})


def _overview(manifest: dict[str, Any], pairs: list[dict[str, Any]],
              filters: list[tuple[str, dict[str, Any]]]) -> str:
    """The stages in the order data flows through them: what each made, its rejects by
    reason, and the time it took over every run that worked on it."""
    from editkit.console import duration, made_text, rejects_text

    stages = manifest.get("stages", {})
    order = [s for s in PIPELINE if s in stages] + [s for s in stages if s not in PIPELINE]
    rows = []
    for stage in order:
        summary = stages[stage]
        if not isinstance(summary, dict):
            continue
        rows.append(f"<tr><td>{esc(stage)}</td><td>{esc(made_text(stage, summary))}</td>"
                    f"<td>{esc(rejects_text(summary))}</td>"
                    f"<td class=num>{esc(duration(summary.get('seconds')))}</td></tr>")
    kept = sum(p.get("status") == "kept" for p in pairs)
    rejected = len(pairs) - kept
    made = (f"{kept:,} pairs rendered ({2 * kept:,} images)"
            + (f", {rejected:,} rejected" if rejected else ""))
    return ("<h2>Run</h2>"
            f"<p>{made}, {len(filters)} filter(s), "
            f"editkit {esc(manifest.get('editkit', '?'))}.</p>"
            + ("<table><tr><th>stage</th><th>made</th><th>rejected</th>"
               "<th>time</th></tr>" + "".join(rows) + "</table>" if rows else ""))


def _filter_stats(filters: list[tuple[str, dict[str, Any]]]) -> str:
    if not filters:
        return ""
    parts = ["<h2>Filters</h2>"]
    for name, records in filters:
        values = list(records.values())
        kept = sum(r["status"] == "kept" for r in values)
        criteria = Counter(r.get("criterion") or r.get("reason") or "?" for r in values
                           if r["status"] != "kept")
        parts.append(f"<h3>{esc(name)}</h3><p>{len(values)} scored, {kept} kept, "
                     f"{len(values) - kept} rejected</p>")
        if criteria:
            parts.append("<table><tr><th>rejected by</th><th>pairs</th></tr>" + "".join(
                f"<tr><td>{esc(c)}</td><td class=num>{n}</td></tr>"
                for c, n in criteria.most_common()) + "</table>")
        keys = sorted({k for r in values for k in r.get("scores", {})})
        if keys:
            rows = []
            for key in keys:
                nums = sorted(float(r["scores"][key]) for r in values
                              if isinstance(r.get("scores", {}).get(key), (int, float)))
                if nums:
                    rows.append(f"<tr><td>{esc(key)}</td>" + "".join(
                        f"<td class=num>{v:.3f}</td>" for v in
                        (nums[0], _quantile(nums, .25), statistics.median(nums),
                         _quantile(nums, .75), nums[-1])) + "</tr>")
            parts.append("<table><tr><th>score</th><th>min</th><th>25%</th><th>median</th>"
                         "<th>75%</th><th>max</th></tr>" + "".join(rows) + "</table>")
    return "\n".join(parts)


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _evaluation(run: Path, thumbs: Thumbnails) -> str:
    data = _json(run / "evaluate" / "metrics.json")
    if not isinstance(data, dict) or not data.get("models"):
        return ""
    names = data.get("metrics", [])
    head = "".join(f"<th>{esc(n)}</th>" for n in ["model", "rows", *names])
    body = []
    for model in data["models"]:
        m = model["metrics"]
        body.append(f"<tr><td>{esc(model['label'])}</td><td class=num>{m.get('rows')}</td>"
                    + "".join("<td class=num>–</td>" if m.get(n) is None else
                              f"<td class=num>{m[n]:.4f}</td>" for n in names) + "</tr>")
    s = data.get("settings", {})
    settings = ", ".join(f"{k} {s[k]}" for k in ("steps", "guidance", "image_guidance",
                                                 "resolution", "seed") if k in s)
    parts = ["<h2>Evaluation</h2>", f"<table><tr>{head}</tr>{''.join(body)}</table>",
             f"<p class=cap>{esc(settings)}; {esc(s.get('preprocessing', ''))}</p>"]
    source = Path(s.get("source", {}).get("dataset", run / "dataset"))
    if not source.is_dir():  # the run folder moved since it was evaluated
        source = run / "dataset"
    examples = data["models"][0]["rows"][:EVAL_EXAMPLES]
    rows = []
    metadata = _dataset_rows(source)
    for i, example in enumerate(examples):
        row = metadata.get(str(example["id"]))
        images = [row["input_image"]] if row and row.get("input_image") else []
        images += [run / "evaluate" / m["rows"][i]["image"] for m in data["models"]
                   if i < len(m["rows"])]
        cells = thumbs.tag(f"eval/{i:04d}", images, example["edit_prompt"])
        rows.append(f"<tr><td>{cells}</td><td>{esc(example['edit_prompt'])}</td></tr>")
    if rows:
        labels = " | ".join(["input"] + [m["label"] for m in data["models"]])
        parts.append(f"<table><tr><th>{esc(labels)}</th><th>instruction</th></tr>"
                     + "".join(rows) + "</table>")
    return "\n".join(parts)


def _judged(run: Path, thumbs: Thumbnails) -> str:
    """The judge's numbers (`evaluate/judge.json`) and a grid of judged held-out edits."""
    data = _json(run / "evaluate" / "judge.json")
    if not isinstance(data, dict) or "pairs" not in data:
        return ""
    from editkit.evaluation.judging import judge_rows

    rows = "".join(f"<tr><td>{esc(a)}</td><td class=num>{esc(b)}</td><td>{esc(c)}</td></tr>"
                   for a, b, c in judge_rows(data))
    parts = [f"<h2>Judged by {esc(data['judge']['use'])}</h2>",
             f"<table><tr><th>measure</th><th>value</th><th>of</th></tr>{rows}</table>"]
    reasons = data["pairs"].get("reasons") or {}
    if reasons:
        parts.append("<p class=cap>commonest reasons a pair is bad: " + esc("; ".join(
            f"{r} ({n})" for r, n in reasons.items())) + "</p>")
    editors = data.get("editors") or []
    cases = data.get("held_out", {}).get("inputs", [])[:EVAL_EXAMPLES]
    if editors and cases:
        head = "".join(f"<th>{esc(e['label'])}</th>" for e in editors)
        body = []
        for i, case in enumerate(cases):
            shown = thumbs.tag(f"judge/{i:04d}-input", [run / "evaluate" / case["image"]],
                               case["instruction"])
            cells = [f"<td>{shown}<div class=cap>{esc(case['instruction'])}</div></td>"]
            for n, editor in enumerate(editors):
                row = editor["rows"][i]
                verdict = ("<span class=ok>good</span>" if row["good"] else
                           f"<span class=why>{esc('; '.join(row['reasons']))}</span>")
                image = thumbs.tag(f"judge/{i:04d}-{n}", [run / "evaluate" / row["image"]],
                                   row["instruction"])
                cells.append(f"<td>{image}<div class=sc>{verdict}</div></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<table><tr><th>held-out input</th>{head}</tr>{''.join(body)}</table>")
    return "\n".join(parts)


def _training_samples(run: Path, thumbs: Thumbnails) -> str:
    folder = run / "train" / "samples"
    if not folder.is_dir():
        return ""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return ""
    figures = []
    for n, path in enumerate(files[:TRAIN_SAMPLES]):
        label = str(path.relative_to(folder))
        figures.append(f"<figure>{thumbs.tag(f'train/{n:04d}', [path], label)}"
                       f"<figcaption>{esc(label)}</figcaption></figure>")
    more = f"<p>and {len(files) - TRAIN_SAMPLES} more in train/samples/</p>" if len(
        files) > TRAIN_SAMPLES else ""
    return f"<h2>Training samples</h2><div class=gallery>{''.join(figures)}</div>{more}"


def _verdict(pair: dict[str, Any], filters: list[tuple[str, dict[str, Any]]]) -> tuple[
        str, str, dict[str, Any]]:
    """(kept|rejected, why, scores) for one rendered pair."""
    if pair.get("status") != "kept":
        return "rejected", f"render: {pair.get('reason', '?')}", {}
    scores: dict[str, Any] = {}
    for name, records in filters:
        record = records.get(pair["id"])
        if record is None:
            return "rejected", f"{name}: not scored (the run stopped before it)", scores
        scores.update(record.get("scores", {}))
        if record["status"] != "kept":
            return "rejected", f"{name}: {record.get('reason')}", scores
    return "kept", "", scores


def _pairs_table(run: Path, pairs: list[dict[str, Any]], filters: list[tuple[str, Any]],
                 splits: dict[str, str], thumbs: Thumbnails) -> str:
    if not pairs:
        return ""
    render = run / "render"
    rows = []
    counts: Counter[str] = Counter()
    for pair in pairs:
        status, why, scores = _verdict(pair, filters)
        counts[status] += 1
        if pair.get("before") and pair.get("after"):
            image = thumbs.tag(f"pairs/{pair['id']}", [render / pair["before"],
                                                      render / pair["after"]], pair["id"])
        else:
            image = ""
        shown = " ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
        split = splits.get(pair["id"], "")
        verdict = (f"<span class=why>{esc(why)}</span>" if status == "rejected" else
                   f"<span class=ok>kept{' · ' + esc(split) if split else ''}</span>")
        rows.append(f"<tr class={status}><td>{image}</td><td>{esc(pair['id'])}</td>"
                    f"<td><b>{esc(pair.get('edit', ''))}</b><div class=cap>"
                    f"{esc(pair.get('input', ''))} → {esc(pair.get('output', ''))}</div></td>"
                    f"<td class=sc>{esc(shown)}</td><td>{verdict}</td></tr>")
    controls = ('<p><label>show <select id="show"><option value="all">all</option>'
                f'<option value="kept">kept ({counts["kept"]})</option><option value='
                f'"rejected">rejected ({counts["rejected"]})</option></select></label> '
                '<label>find <input id="find" type="search"></label> <span id="count">'
                '</span></p>')
    return (f"<h2>Pairs</h2>{controls}<table id=pairs><thead><tr><th>before | after</th>"
            "<th>id</th><th>instruction · captions</th><th>scores</th><th>verdict</th></tr>"
            f"</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")
