"""Figure output shared by training and evaluation: PNG for the dashboard, SVG beside it for the paper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def wrap_titles(fig: Any) -> None:
    """Breaks each axes' title into lines its axes' width holds: titles that name the model, the split and n ran past
    the figure's edges, cut off on both sides."""
    import textwrap

    for ax in fig.axes:
        title = ax.title
        text = title.get_text()
        if not text or "\n" in text:
            continue
        width_in = ax.get_position().width * fig.get_figwidth()
        chars = max(20, int(width_in * 72 / (0.55 * title.get_fontsize())))  # a character is about 0.55 em wide
        if len(text) > chars:
            title.set_text("\n".join(textwrap.wrap(text, chars, break_on_hyphens=False, break_long_words=False)))


def save_figure(fig: Any, path: Path, svg: bool = True, dpi: int = 200) -> Path:
    """Writes ``fig`` as PNG (and an SVG beside it) and closes it; returns the PNG's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wrap_titles(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    if svg:
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path
