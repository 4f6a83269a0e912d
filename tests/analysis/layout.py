"""Is a report readable: rendered in headless Chromium, do its blocks overlap or run off the page;
drawn by matplotlib, do a plot's labels overlap or leave the figure."""

from __future__ import annotations

import html
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from tests.conftest import cannot_run

WIDTH = 1280
# After load, the box of every block and of every figure's parts, the page's width and what it scrolls to.
MEASURE = """<script>window.addEventListener('load', () => {
  const box = el => { const r = el.getBoundingClientRect();
    return {tag: el.tagName, text: (el.textContent || el.alt || '').slice(0, 60),
            x: r.left, y: r.top, w: r.width, h: r.height}; };
  const groups = [Array.from(document.body.children)];
  for (const fig of document.querySelectorAll('figure')) groups.push(Array.from(fig.children));
  document.body.setAttribute('data-layout', JSON.stringify({
    groups: groups.map(g => g.filter(el => el.tagName !== 'SCRIPT').map(box)),
    page: {client: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth}}));
});</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        cannot_run("the report layout check", "no chromium (apt install chromium)")
    return found


def rendered(page: Path, tmp: Path) -> dict:
    """The layout Chromium gives `page` in a WIDTH-pixel window."""
    probe = tmp / f"layout-{page.parent.name}.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--window-size={WIDTH},4000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, f"the page did not load in chromium: {dom[:300]}"
    return json.loads(html.unescape(found.group(1)))


def layout_problems(layout: dict) -> list[str]:
    """Blocks of one parent that overlap, blocks past the page's right edge, a page wider than the window."""
    problems = []
    page = layout["page"]
    if page["scroll"] > page["client"]:
        problems.append(f"the page scrolls sideways: {page['scroll']} px for {page['client']} px")
    for group in layout["groups"]:
        boxes = [b for b in group if b["w"] > 0 and b["h"] > 0]
        for b in boxes:
            if b["x"] + b["w"] > page["client"] + 0.5:
                problems.append(f"{b['tag']} '{b['text']}' ends at {b['x'] + b['w']:.0f} px, past {page['client']}")
        for a, b in itertools.pairwise(boxes):
            if b["y"] < a["y"] + a["h"] - 0.5:
                problems.append(f"{a['tag']} '{a['text']}' and {b['tag']} '{b['text']}' overlap")
    return problems


def text_overlaps(fig: Figure) -> list[str]:
    """Tick labels, axis labels, titles and legend texts of a figure drawn as saved: pairs that overlap
    within one axes, and any that leave the figure."""
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    frame = Bbox.from_bounds(0, 0, *fig.canvas.get_width_height())
    problems = []
    for ax in fig.axes:
        ticks = [_drawn(label, renderer) for axis in (ax.xaxis, ax.yaxis) for label in _tick_labels(axis)]
        ticks = [t for t in ticks if t]
        others = [ax.xaxis.label, ax.yaxis.label, ax.title]
        legend = ax.get_legend()
        others += list(legend.get_texts()) if legend else []
        for text, box in ticks + [t for t in (_drawn(o, renderer) for o in others) if t]:
            if box.x0 < frame.x0 - 1 or box.x1 > frame.x1 + 1 or box.y0 < frame.y0 - 1 or box.y1 > frame.y1 + 1:
                problems.append(f"'{text}' leaves the figure")
        for i, (a, box_a) in enumerate(ticks):
            for b, box_b in ticks[i + 1 :]:
                if box_a.overlaps(box_b):
                    problems.append(f"tick labels '{a}' and '{b}' overlap")
    return problems


def _tick_labels(axis: Axis) -> list[Text]:
    """The labels of the ticks inside the view: matplotlib keeps, and does not draw, the others."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-9
    return [tick.label1 for tick in axis.get_major_ticks() if low - span <= tick.get_loc() <= high + span]


def _drawn(text: Text, renderer: RendererBase) -> tuple[str, Bbox] | None:
    return (text.get_text(), text.get_window_extent(renderer)) if text.get_visible() and text.get_text() else None
