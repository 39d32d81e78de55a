"""reports/index.html: one page with the quality + performance table and two PNG charts beside it.

size_quality.png: bytes on disk against KL(reference || artifact) and top-1 agreement, one labelled point per
variant; size_speed.png: bytes on disk against decode tokens/s and time to first token. Drawn with matplotlib's Agg
backend (no display needed). Called by pipeline/stages/report.py with the rows it has already gated.
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path

CHARTS = ("size_quality.png", "size_speed.png")
FAMILY_COLORS = {"fp32": "#4d4d4d", "fp16": "#1f77b4", "int8": "#2ca02c", "int4": "#d62728"}
# column -> (heading, format); a value of None prints as a dash
TABLE = [
    ("family", "family", "{}"), ("status", "gate", "{}"), ("cosine", "logit cosine", "{:.5f}"),
    ("top1", "top-1", "{:.3f}"), ("kl", "KL", "{:.2e}"), ("ppl_ratio", "ppl ratio", "{:.4f}"),
    ("similarity", "answer similarity", "{:.3f}"), ("answers_identical", "answers =", "{:.2f}"), ("size_mb", "on disk MB", "{:.1f}"),
    ("ttft_ms", "TTFT ms", "{:.1f}"), ("tokens_per_s", "decode tok/s", "{:.1f}"),
    ("smoke_rss_mb", "smoke RSS MB", "{:.0f}"), ("export_wall_s", "export s", "{:.1f}"),
    ("export_rss_mb", "export RSS MB", "{:.0f}"), ("device", "ran on", "{}"),
]
CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 20px 0 6px; }
.meta { color: #666; margin-bottom: 12px; }
.charts img { display: block; width: 100%; max-width: 1100px; margin-bottom: 10px; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; white-space: normal; vertical-align: bottom; }
td:first-child, th:first-child, td.text { text-align: left; }
sup { color: #b05000; }
tr.miss td { background: #fde8e8; } .ok { color: #207020; } .MISS { color: #b00000; font-weight: bold; }
.misses { color: #b00000; }
"""


def _label(row: dict, models: int) -> str:
    return f"{row['model']}/{row['variant']}" if models > 1 else row["variant"]


# label offsets (points) tried in turn until the label overlaps no other label or point
OFFSETS = [(10, 8), (10, -16), (-10, 8), (-10, -16), (14, 22), (14, -30), (-14, 22), (-14, -30), (20, 36),
           (20, -44), (-20, 36), (-20, -44)]


def _scatter(ax, rows: list[dict], x: str, y: str, log: bool) -> list[dict]:
    pts = sorted((r for r in rows if r.get(x) is not None and r.get(y) is not None), key=lambda r: (r[x], r[y]))
    for r in pts:
        ax.scatter(r[x], r[y], s=60, color=FAMILY_COLORS.get(r["family"], "#9467bd"), edgecolor="white",
                   linewidth=0.8, zorder=3)
    if log and any(r[y] > 0 for r in pts):
        ax.set_yscale("log")
    ax.grid(True, color="#e8e8e8", zorder=0)
    ax.set_axisbelow(True)
    ax.margins(x=0.25, y=0.2)
    return pts


def _place_labels(ax, pts: list[dict], x: str, y: str, models: int) -> None:
    """Greedy: each label takes the first offset whose box clears the labels placed so far and every point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    dots = [ax.transData.transform((r[x], r[y])) for r in pts]
    points = [Bbox.from_extents(px - 7, py - 7, px + 7, py + 7) for px, py in dots]  # marker s=60
    frame = ax.get_window_extent(renderer)
    taken: list = []
    for r in pts:
        for dx, dy in OFFSETS:
            # a leader line from each label to its point: in a tight cluster, position alone is ambiguous
            leader = {"arrowstyle": "-", "color": "#aaa", "lw": 0.6, "shrinkA": 1, "shrinkB": 5}
            text = ax.annotate(_label(r, models), (r[x], r[y]), xytext=(dx, dy), textcoords="offset points",
                               fontsize=8.5, color="#333", ha="left" if dx > 0 else "right", arrowprops=leader)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).expanded(1.05, 1.1)  # the text alone, not its leader
            inside = frame.x0 < box.x0 and box.x1 < frame.x1 and frame.y0 < box.y0 and box.y1 < frame.y1
            if inside and not any(box.overlaps(b) for b in taken + points):
                break
            text.remove()
        else:  # nowhere free: keep the first offset
            text = ax.annotate(_label(r, models), (r[x], r[y]), xytext=OFFSETS[0], textcoords="offset points",
                               fontsize=8.5, color="#333")
            box = Text.get_window_extent(text, renderer)
        taken.append(box)


def _legend(fig, rows: list[dict]) -> None:
    from matplotlib.lines import Line2D

    families = sorted({r["family"] for r in rows})
    handles = [Line2D([], [], marker="o", linestyle="", color=FAMILY_COLORS.get(f, "#9467bd"), label=f)
               for f in families]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), frameon=False, fontsize=9)


def charts(rows: list[dict], out_dir: Path) -> list[Path]:
    """Write the two PNGs into `out_dir`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = len({r["model"] for r in rows})
    paths = [Path(out_dir) / name for name in CHARTS]
    for path, panels, title in [
        (paths[0], [("kl", "KL(reference ‖ artifact), log scale", True), ("top1", "top-1 agreement", False),
                    ("similarity", "answer similarity", False)],
         "Size vs quality (vs the FP32 reference)"),
        (paths[1], [("tokens_per_s", "decode tokens/s", False), ("ttft_ms", "time to first token (ms)", False)],
         "Size vs speed (smoke run, first CPU run)"),
    ]:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), dpi=110)
        drawn = []
        for ax, (y, ylabel, log) in zip(axes, panels):
            drawn.append(_scatter(ax, rows, "size_mb", y, log))
            ax.set_xlabel("on disk (MB)")
            ax.set_ylabel(ylabel)
        fig.suptitle(title, x=0.01, ha="left", fontsize=12)
        _legend(fig, rows)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        for ax, pts, (y, _, _) in zip(axes, drawn, panels):  # after the layout: labels are placed in display space
            _place_labels(ax, pts, "size_mb", y, models)
        fig.savefig(path)
        plt.close(fig)
    return paths


def _cell(row: dict, key: str, fmt: str, notes: list[str] | None = None) -> str:
    value = row.get(key)
    text = html.escape("–" if value is None else fmt.format(value))
    if key == "device" and row.get("fallback") and notes is not None:  # the reason goes to a footnote
        if row["fallback"] not in notes:
            notes.append(row["fallback"])
        text += f"<sup>{notes.index(row['fallback']) + 1}</sup>"
    cls = f' class="{html.escape(str(value))}"' if key == "status" else ' class="text"' if fmt == "{}" else ""
    return f"<td{cls}>{text}</td>"


def page(rows: list[dict], exports: list[dict], misses: list[str], enforce: bool, not_built: list[str] = ()) -> str:
    models = len({r["model"] for r in rows})
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in TABLE)
    notes: list[str] = []
    body = "\n".join(
        f'<tr class="{"miss" if r["status"] == "MISS" else ""}"><td>{html.escape(_label(r, models))}</td>'
        + "".join(_cell(r, k, f, notes) for k, _, f in TABLE) + "</tr>"
        for r in rows
    )
    footnotes = "".join(f"<br><sup>{i}</sup> {html.escape(n)}" for i, n in enumerate(notes, 1))
    stages = "\n".join(
        f"<tr><td>{html.escape(e['stage'])}</td>"
        + "".join(_cell(e, k, f) for k, f in [("wall_s", "{:.1f}"), ("peak_rss_mb", "{:.0f}")]) + "</tr>"
        for e in exports
    )
    verdict = (f'<p class="misses"><b>{len(misses)} threshold miss(es)</b>'
               f'{"" if enforce else " (quality.enforce is false: not failing the pipeline)"}:<br>'
               + "<br>".join(html.escape(m) for m in misses) + "</p>") if misses else \
        '<p class="ok">Every gated variant is within its thresholds.</p>'
    if not_built:
        verdict = (f'<p class="misses"><b>{len(not_built)} build(s) did not complete</b>:<br>'
                   + "<br>".join(html.escape(m) for m in not_built) + "</p>\n" + verdict)
    imgs = "".join(f'<img src="{name}" alt="{name}">' for name in CHARTS)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aipc report</title><style>{CSS}</style></head>
<body>
<h1>Artifacts vs the FP32 reference</h1>
<div class="meta">{len(rows)} model x variant(s), {models} model(s); written by <code>aipc report</code> at {when}.
Quality from each artifact's own runtime (teacher-forced); speed and memory from its smoke run.</div>
{verdict}
<div class="charts">{imgs}</div>
<h2>Quality and performance</h2>
<table><thead><tr><th>variant</th>{head}</tr></thead><tbody>
{body}
</tbody></table>
<h2>Export stages</h2>
<table><thead><tr><th>stage</th><th>wall s</th><th>peak RSS MB</th></tr></thead><tbody>
{stages}
</tbody></table>
<p class="meta">TTFT and decode tokens/s: medians over the smoke prompts after the first (warm-up), from the first
run on CPU ("ran on"; a fallback from the requested device is footnoted). Peak RSS is the stage process's (children
included). KL is over the reference's top-k plus one tail bucket (a lower bound of the full KL).{footnotes}</p>
</body></html>
"""


def write(rows: list[dict], exports: list[dict], misses: list[str], enforce: bool, out: Path,
          not_built: list[str] = ()) -> list[Path]:
    """Write `out` (the HTML page) and its PNGs beside it; return every path written. `rows` without numbers (a
    build that failed, was not run or is not configured) are listed with their status and drawn nowhere."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = charts(rows, out.parent)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(page(rows, exports, misses, enforce, list(not_built)), encoding="utf-8")
    tmp.replace(out)
    return [out, *pngs]
