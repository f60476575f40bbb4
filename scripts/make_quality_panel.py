"""Builds benchmarks/panel/: the quality panel's images, each public domain or CC0, resized to at
most 320 pixels on the long side and saved as JPEG (the whole panel stays a few hundred KiB).

Sources: scikit-image's bundled sample data (pass the folder of an unpacked scikit-image wheel's
skimage/data, or have scikit-image installed), matplotlib's sample data (installed with the
project), and one flat graphic generated here (CC0). Credits: benchmarks/panel/CREDITS.md.

    python scripts/make_quality_panel.py [SKIMAGE_DATA_DIR]
"""

import os
import random
import sys

from PIL import Image, ImageDraw

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "panel")
LONG_SIDE = 320
SKIMAGE = {
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble": "hubble_deep_field.jpg",
    "brick": "brick.png",
    "gravel": "gravel.png",
    "grass": "grass.png",
    "ihc": "ihc.png",
    "retina": "retina.jpg",
    "horse": "horse.png",
}


def blocks(path):
    """A flat graphic in the manner of De Stijl: primary-coloured rectangles between black bars (CC0)."""
    rng = random.Random(1921)
    image = Image.new("RGB", (LONG_SIDE, LONG_SIDE), (245, 242, 232))
    draw = ImageDraw.Draw(image)
    xs = sorted(rng.sample(range(30, LONG_SIDE - 30), 4))
    ys = sorted(rng.sample(range(30, LONG_SIDE - 30), 4))
    cells = [
        (x0, y0, x1, y1) for x0, x1 in zip([0] + xs, xs + [LONG_SIDE]) for y0, y1 in zip([0] + ys, ys + [LONG_SIDE])
    ]
    for cell, colour in zip(rng.sample(cells, 6), [(200, 30, 30), (30, 60, 170), (240, 200, 20)] * 2):
        draw.rectangle(cell, fill=colour)
    for x in xs:
        draw.rectangle((x - 4, 0, x + 4, LONG_SIDE), fill=(15, 15, 15))
    for y in ys:
        draw.rectangle((0, y - 4, LONG_SIDE, y + 4), fill=(15, 15, 15))
    image.save(path, quality=90)


def shrink(image, long_side=LONG_SIDE):
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    scale = long_side / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    return image


def main():
    if len(sys.argv) > 1:
        data = sys.argv[1]
    else:
        import skimage

        data = os.path.join(os.path.dirname(skimage.__file__), "data")
    import matplotlib

    os.makedirs(OUT, exist_ok=True)
    for name, file in SKIMAGE.items():
        image = Image.open(os.path.join(data, file))
        if name == "horse":  # a small flat silhouette: the "style much smaller than the content" case
            image = shrink(image.convert("RGB"), 96)
        else:
            image = shrink(image)
        image.save(os.path.join(OUT, f"{name}.jpg"), quality=88)
    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    shrink(Image.open(hopper)).save(os.path.join(OUT, "hopper.jpg"), quality=88)
    blocks(os.path.join(OUT, "blocks.jpg"))


if __name__ == "__main__":
    main()
