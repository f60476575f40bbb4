"""Loss-curve plot of a run, as a PIL image (written atomically by the caller)."""

import io
from typing import Dict, List

from PIL import Image


def plot_losses(history: List[Dict[str, float]]) -> Image.Image:
    """history: one dict per loss evaluation with keys stage, content, style, tv, total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    steps = range(1, len(history) + 1)
    for key, colour in (("total", "black"), ("style", "tab:blue"), ("content", "tab:orange"), ("tv", "tab:green")):
        values = [max(entry[key], 1e-12) for entry in history]
        axes.plot(steps, values, label=key, color=colour, linewidth=1.6 if key == "total" else 1.1)
    for index in range(1, len(history)):
        if history[index]["stage"] != history[index - 1]["stage"]:
            axes.axvline(index + 0.5, color="grey", linestyle=":", linewidth=1)
            axes.text(
                index + 1,
                axes.get_ylim()[1],
                f" stage {int(history[index]['stage']) + 1}",
                va="top",
                fontsize=8,
                color="grey",
            )
    axes.set_yscale("log")
    # The content loss starts at exactly 0 from a content initialisation; keep the axis on the useful range.
    peak = max(entry["total"] for entry in history)
    axes.set_ylim(bottom=max(1e-4 * peak, 1e-12))
    axes.set_xlabel("loss evaluation")
    axes.set_ylabel("weighted loss")
    axes.set_title("nst-ext: loss during optimisation")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
