"""Still things stay still at any style strength: on clips with a still camera and a small object
crossing, the flicker of the still background (the warping error of the true motion away from the
object, clips.object_path_error) of the default flow method, as a fraction of frame-by-frame
stylization's, for style weights from the old default 2.9 to 200. A temporal term that does not
follow the style weight lets a stronger style repaint still pixels every frame.

    python benchmarks/video_style_strength.py [--size 96] [--frames 8] [--frame-steps 12]
        [--weights 2.9,20,60,200] [--clips object,beach] [--temporal 200] [--json F]

Each row: a clip, a style weight, the frame-by-frame flicker, the default method's, their ratio.
"""

import argparse
import dataclasses
import json

import nst_ext
from nst_ext.io.images import load_image
from nst_ext.jobs import LONG_TERM, TEMPORAL_WEIGHT, FrameChain
from nst_ext.stylizer import Stylizer

from _common import STYLE
from clips import motion_clip, object_path_error

# Still cameras with an object crossing: the one the flicker was first seen on, and others unlike it
# (other photos, another object, the object moving the other way and faster).
CLIPS = {
    "object": dict(photo="hopper", object_photo="ihc", object_step=(3, 0)),
    "beach": dict(photo="coffee", object_photo="brick", object_step=(-4, 0)),
    "camera": dict(photo="camera", object_photo="retina", object_step=(2, 1)),
}


def background_flicker(clip, outputs) -> float:
    """The still background's flicker: the warping error away from the object's path and edges."""
    return object_path_error(clip, outputs)[2]


def frame_by_frame(clip, following, styles):
    return [following.run(frame, styles, init=frame).tensor for frame in clip.frames]


def with_flow(clip, opening, following, styles, temporal_weight):
    outputs = [opening.run(clip.frames[0], styles).tensor]
    with FrameChain(opening, following, styles, "flow", LONG_TERM, temporal_weight) as chain:
        chain.add_input(0, clip.frames[0])
        chain.add_output(0, outputs[0])
        chain.add_input(1, clip.frames[1])
        for index in range(1, len(clip.frames)):
            if index + 1 < len(clip.frames):
                chain.add_input(index + 1, clip.frames[index + 1])
            outputs.append(chain.stylize(index).tensor)
    return outputs


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="long side; the clips are 3:2")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--frame-steps", type=int, default=12)
    parser.add_argument("--weights", default="2.9,20,60,200")
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument(
        "--temporal",
        type=float,
        default=TEMPORAL_WEIGHT,
        help="the temporal weight as --temporal-weight takes it (at the default style weight)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    styles = [load_image(STYLE)]
    rows = []
    print("| clip | style weight | frame by frame | flow (default) | ratio |\n|---|---:|---:|---:|---:|", flush=True)
    for name in args.clips.split(","):
        clip = motion_clip(name, frames=args.frames, size=(args.size * 2 // 3, args.size), **CLIPS[name])
        for weight in map(float, args.weights.split(",")):
            options = nst_ext.StyleOptions(size=args.size, seed=0, style_weight=weight)
            opening = Stylizer(options)
            following = Stylizer(dataclasses.replace(options, scales=[args.size], steps=args.frame_steps))
            alone = background_flicker(clip, frame_by_frame(clip, following, styles))
            chained = background_flicker(clip, with_flow(clip, opening, following, styles, args.temporal))
            rows.append(dict(clip=name, style_weight=weight, frame_by_frame=alone, flow=chained, ratio=chained / alone))
            print(f"| {name} | {weight:g} | {alone:.4f} | {chained:.4f} | {chained / alone:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(dict(vars(args), rows=rows), out, indent=1)


if __name__ == "__main__":
    main()
