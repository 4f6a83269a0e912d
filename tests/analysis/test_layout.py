"""The layout checks the report tests rely on find what they claim to: overlapping blocks, a page
wider than the window, overlapping tick labels and labels outside the figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from tests.analysis.layout import layout_problems, rendered, text_overlaps


def test_overlapping_and_overflowing_blocks_are_found(tmp_path: Path) -> None:
    page = tmp_path / "bad" / "report.html"
    page.parent.mkdir()
    page.write_text(
        "<!doctype html><html><body><h2>first</h2><p style='margin-top:-30px'>pulled up over the heading</p>"
        "<table style='width:3000px'><tr><td>wide</td></tr></table></body></html>"
    )
    found = layout_problems(rendered(page, tmp_path))
    assert any("overlap" in p and "first" in p for p in found), found
    assert any("scrolls sideways" in p for p in found) and any("past" in p for p in found), found


def test_overlapping_tick_labels_and_labels_outside_the_figure_are_found() -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    names = [f"a rather long category name {i}" for i in range(12)]
    ax.bar(names, range(12))
    found = text_overlaps(fig)
    plt.close(fig)
    assert any(p.startswith("tick labels") for p in found), found
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    assert text_overlaps(fig) == []
    plt.close(fig)
