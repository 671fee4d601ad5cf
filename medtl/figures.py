"""Figure output shared by training and evaluation: PNG for the dashboard, SVG beside it for the paper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: Any, path: Path, svg: bool = True, dpi: int = 200) -> Path:
    """Writes ``fig`` as PNG (and an SVG beside it) and closes it; returns the PNG's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    if svg:
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path
