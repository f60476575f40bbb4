"""The README's demo figures from one run of the default settings on the sample images shipped in
the package: ``docs/demo.jpg`` (content, style, result side by side) and ``docs/demo-loss.png``
(the loss curve); prints the run's optimisation time.

    python scripts/make_demo_figure.py [--out docs]
"""

import argparse
import os

from PIL import Image

import nst_ext
from nst_ext.io.images import save_image, to_pil
from nst_ext.cli.plot import plot_losses

TILE, GAP = 400, 7  # each picture 400 px high, 7 px of white between


def side_by_side(pictures):
    tiles = [
        picture.resize((round(TILE * picture.width / picture.height), TILE), Image.LANCZOS) for picture in pictures
    ]
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + GAP * (len(tiles) - 1), TILE), "white")
    left = 0
    for tile in tiles:
        sheet.paste(tile, (left, 0))
        left += tile.width + GAP
    return sheet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    data = os.path.join(os.path.dirname(nst_ext.__file__), "data")
    content, style = (nst_ext.load_image(os.path.join(data, name)) for name in ("astronaut.jpg", "swirls.jpg"))
    result = nst_ext.Stylizer().run(content, style)
    save_image(
        side_by_side([to_pil(content), to_pil(style), result.image]), os.path.join(args.out, "demo.jpg"), overwrite=True
    )
    save_image(plot_losses(result.history), os.path.join(args.out, "demo-loss.png"), overwrite=True)
    print(f"defaults, {len(result.history)} loss evaluations: {result.seconds:.1f} s of optimisation")


if __name__ == "__main__":
    main()
