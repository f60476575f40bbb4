"""The video benchmark's check on a case unlike the clips it was built on (benchmarks/video_motion.py):
a diagonal pan (−3, +2 px a frame) over another photo, at 256×192, with a panel style instead of the
sample painting and another seed; frame by frame, the still-camera method and the default flow
method, by the warping error of the true motion (one and five frames apart) and the median seconds
per later frame.

    python benchmarks/video_unlike.py
"""

import dataclasses
import statistics

import nst_ext
from nst_ext.io.images import load_image
from nst_ext.jobs import LONG_TERM
from nst_ext.stylizer import Stylizer

from clips import PANEL, motion_clip, warping_error
from video_motion import stylize_clip


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    clip = motion_clip("diagonal pan", "coffee", 6, (192, 256), pan=(-3, 2))
    options = nst_ext.StyleOptions(size=256, seed=1)
    opening = Stylizer(options)
    following = Stylizer(dataclasses.replace(options, scales=[256], steps=30))
    styles = [load_image(PANEL / "gravel.jpg")]
    first = opening.run(clip.frames[0], styles).tensor
    print("| method | warp | warp Δ5 | s/frame |\n|---|---:|---:|---:|")
    for name, coherence, long_term in [
        ("each frame on its own", None, None),
        ("still (before flow)", "still", (1,)),
        ("flow, long-term 1,2,4 (default)", "flow", LONG_TERM),
    ]:
        outputs, seconds = stylize_clip(clip, first, opening, following, styles, coherence, long_term)
        print(
            f"| {name} | {warping_error(clip, outputs):.4f} | {warping_error(clip, outputs, 5):.4f} | "
            f"{statistics.median(seconds):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
