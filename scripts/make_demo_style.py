"""Generates nst_ext/data/swirls.jpg, the demo's style image: thick brush
strokes that follow a field of vortices, in a night-sky palette. Procedural and
seeded, so the picture is ours to ship (CC0) and reproducible.

    python scripts/make_demo_style.py nst_ext/data/swirls.jpg
"""

import math
import random
import sys

from PIL import Image, ImageDraw, ImageFilter

SIZE = 512
PALETTE_SKY = [(16, 38, 92), (28, 64, 140), (44, 98, 178), (72, 132, 196), (22, 50, 110), (110, 160, 210)]
PALETTE_LIGHT = [(246, 214, 92), (250, 236, 160), (236, 180, 60), (255, 250, 220)]
PALETTE_GROUND = [(20, 30, 40), (38, 52, 46), (60, 70, 50), (16, 22, 30)]


def main(path):
    rng = random.Random(1889)
    vortices = [
        (rng.uniform(0, SIZE), rng.uniform(0, SIZE * 0.7), rng.uniform(0.6, 1.4) * rng.choice((-1, 1)))
        for _ in range(5)
    ]
    stars = [(rng.uniform(20, SIZE - 20), rng.uniform(20, SIZE * 0.6), rng.uniform(10, 26)) for _ in range(9)]

    def flow(x, y):
        vx, vy = 1.0, 0.15 * math.sin(y / 37.0)
        for cx, cy, strength in vortices:
            dx, dy = x - cx, y - cy
            r2 = dx * dx + dy * dy + 400.0
            vx += -dy * strength * 900.0 / r2
            vy += dx * strength * 900.0 / r2
        norm = math.hypot(vx, vy) + 1e-9
        return vx / norm, vy / norm

    image = Image.new("RGB", (SIZE, SIZE), (24, 48, 110))
    draw = ImageDraw.Draw(image)
    for _ in range(9000):
        x, y = rng.uniform(-20, SIZE + 20), rng.uniform(-20, SIZE + 20)
        ground = y > SIZE * 0.78 + 25 * math.sin(x / 60.0)
        near_star = any(math.hypot(x - sx, y - sy) < r * 2.2 for sx, sy, r in stars)
        palette = PALETTE_GROUND if ground else PALETTE_LIGHT if near_star or rng.random() < 0.06 else PALETTE_SKY
        base = rng.choice(palette)
        colour = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in base)
        points = [(x, y)]
        for _ in range(rng.randint(4, 12)):
            dx, dy = flow(x, y) if not ground else (1.0, 0.2 * math.sin(x / 25.0))
            x, y = x + 5 * dx, y + 5 * dy
            points.append((x, y))
        draw.line(points, fill=colour, width=rng.randint(3, 7), joint="curve")
    for sx, sy, r in stars:
        for ring in range(4, 0, -1):
            draw.ellipse(
                [sx - r * ring / 3, sy - r * ring / 3, sx + r * ring / 3, sy + r * ring / 3],
                outline=rng.choice(PALETTE_LIGHT),
                width=3,
            )
        draw.ellipse([sx - r / 3, sy - r / 3, sx + r / 3, sy + r / 3], fill=(255, 248, 210))
    image = image.filter(ImageFilter.SMOOTH)
    image.save(path, quality=92)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "nst_ext/data/swirls.jpg")
