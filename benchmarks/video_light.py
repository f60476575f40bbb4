"""Video under changing light: does a stylized clip follow the input's light? Clips of
benchmarks/clips.py's photos, each frame darker than the one before by --fade (a fade to dark, a
passing cloud), with a still camera and a panning one. Each is stylized frame by frame (30 steps a
frame from its own content, the baseline) and with the default flow method; the figure is how much
the picture's mean luminance fell from the first frame to the last. Flow's temporal term holds
trusted pixels to the carried frame, so a method that carried only the earlier frame's light would
not darken at all.

    python benchmarks/video_light.py [--frames 8] [--size 160] [--fade 0.05] [--json F]
"""

import argparse
import dataclasses
import json

import torch

import nst_ext
from nst_ext.io.images import load_image
from nst_ext.jobs import FRAME_STEPS, LONG_TERM
from nst_ext.stylizer import Stylizer

from _common import STYLE
from clips import motion_clip
from video_motion import stylize_clip

CLIPS = (("still camera", "chelsea", (0, 0)), ("pan", "coffee", (1, 0)))


def luminance(image: torch.Tensor) -> float:
    return float((0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).mean())


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=160, help="long side; the clips are 4:3")
    parser.add_argument("--fade", type=float, default=0.05, help="each frame this share darker than the first")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    styles, rows = [load_image(STYLE)], []
    print("| clip | input | frame by frame | flow (default) |\n|---|---:|---:|---:|")
    for name, photo, pan in CLIPS:
        clip = motion_clip(name, photo, args.frames, (args.size * 3 // 4, args.size), pan=pan)
        faded = [(frame * (1 - args.fade * index)).clamp(0, 1) for index, frame in enumerate(clip.frames)]
        clip = dataclasses.replace(clip, frames=faded)
        options = nst_ext.StyleOptions(size=args.size, seed=0)
        opening = Stylizer(options)
        following = Stylizer(dataclasses.replace(options, scales=[args.size], steps=FRAME_STEPS))
        first = opening.run(clip.frames[0], styles).tensor
        alone, _ = stylize_clip(clip, first, opening, following, styles, None, None)
        flow, _ = stylize_clip(clip, first, opening, following, styles, "flow", LONG_TERM)
        fell = {
            key: luminance(images[0]) - luminance(images[-1])
            for key, images in (("input", clip.frames), ("alone", alone), ("flow", flow))
        }
        rows.append(dict(clip=name, fade=args.fade, **{f"{key}_fell": value for key, value in fell.items()}))
        print(f"| {name} | {fell['input']:.3f} | {fell['alone']:.3f} | {fell['flow']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"frames": args.frames, "size": args.size, "torch": torch.__version__, "rows": rows}, out, indent=1
            )


if __name__ == "__main__":
    main()
