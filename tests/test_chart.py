"""asr.png's structure: one panel per measured metric, "base"/"edited" in one legend outside the
axes, and every bar (zeros included) drawn with its value and n written above it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from test_report import _report  # noqa: E402

from swe_cli.chart import chart_figure, write_chart  # noqa: E402


def texts(axis) -> list[str]:  # type: ignore[no-untyped-def]
    return [text.get_text() for text in axis.texts]


def test_panels_legend_and_labels() -> None:
    import matplotlib.pyplot as plt

    figure = chart_figure(_report(utility=True))
    panels = [axis for axis in figure.axes if axis.get_visible()]
    titles = [axis.get_title() for axis in panels]
    assert len(panels) == 6, titles
    for word in ("ASR", "Over-refusal", "Harmless", "short answers", "multiple choice", "KL"):
        assert sum(word in title for title in titles) == 1, (word, titles)
    # one legend, on the figure (outside every panel), naming base and edited only
    assert all(axis.get_legend() is None for axis in figure.axes)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["base", "edited"]
    asr, over = panels[0], panels[1]
    # base en, bn, then edited en, bn: the edited en bar is 0 %, drawn (visible) and labelled
    assert texts(asr) == ["10\nn=10", "90\nn=10", "0\nn=10", "20\nn=10"]
    heights = [patch.get_height() for patch in asr.patches]
    assert len(heights) == 4 and min(heights) > 0
    assert len(texts(over)) == 4 and all("n=30" in text for text in texts(over))
    kl = panels[-1]
    assert texts(kl) == ["0.013\nn=5", "0.030\nn=5"]  # edited only: KL is base against edited
    assert all("\nn=" in text for axis in panels for text in texts(axis))
    plt.close(figure)


def test_organism_kind_of_report_and_no_paths(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    report = _report()
    figure = chart_figure(report)
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title().split(":")[0].split(",")[0] for axis in panels] == [
        "Attack success (ASR)",
        "Harmless prompts refused",
        "Utility",
        "KL(base ‖ edited) on harmless prompts",
    ]
    every = " ".join(
        [t.get_text() for t in figure.findobj(match=lambda artist: hasattr(artist, "get_text"))]
    )
    assert "out/edited" not in every and "org/base" not in every
    plt.close(figure)
    assert write_chart(report, tmp_path / "asr.png")
    from PIL import Image

    with Image.open(tmp_path / "asr.png") as image:  # two panels a row, wide enough for a card
        width, height = image.size
    assert width >= 700 and height >= 500
