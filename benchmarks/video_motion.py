"""Video under motion: how well a stylized clip moves with its scene, by the true motion. Clips with
known motion made from the panel's photos (benchmarks/clips.py: a still camera, a pan, a pan over a
large sky, a zoom, an object crossing a still background, an object crossing a panned one), each
stylized in one run by:

- each frame on its own: FRAME_STEPS steps from its own content, no temporal term, the first frame
  too (a frame-by-frame baseline at the same cost a frame; the full single-picture run per frame
  flickers more);
- ``--coherence still`` (nst_ext before optical flow): the previous stylized frame as it lies on
  the screen, static pixels held;
- ``--coherence flow --long-term 1``: the previous frame warped by DIS optical flow, its
  consistency mask;
- ``--coherence flow`` (the default, long-term frames 1, 2, 4);
- the same, then 1 or 2 more passes in alternating directions (``--passes 2``, ``3``: Ruder et al.'s
  multi-pass mode, nst_ext.jobs.passes);
- a reference, not a method: the first stylized frame carried frame after frame by the TRUE motion
  with nst_ext's warp and nothing repainted: what the warp alone costs by these figures (on a zoom,
  where nothing is uncovered, the error of a method that repaints nothing and has the true motion).

The other methods start from the same first frame (the full run, seed 0). Figures:
    warp      warping error mean|O_t − W(O_t−1)| over pixels visible in both frames, W the TRUE
              motion read bilinearly (clips.warping_error; on the still clip it is the flicker);
              values in [0, 1]
    lanczos   the same read with Lanczos-4 (clips.WARP_KERNELS: bilinear flatters a warp that blurs)
    warp Δ5   the same between frames 5 apart (long-term consistency)
    path      for clips with an object: the warping error on the background inside the object's
              path ÷ elsewhere (a trail or ghost left behind shows as ≫ 1)
    trail     the same, leaving out 4 pixels around the object's edges in both frames of a pair
              (where an edge's style changes with what is beside it; a trail behind stays in)
    object    (JSON) the warping error on the object's own pixels (clips.object_error)
    sharp     mean gradient magnitude of the last frame ÷ that of the first (warping blurs: < 1; the
              JSON's sharpness_last is the last frame's own)
    s/frame   median seconds per later frame (the flow made on the worker thread, overlapped)
and the input's own warping error by each kernel (the metric's floor: reading between pixels
blurs a zoom). Writes the
table to stdout, JSON with --json, and a contact sheet with --sheet (per clip: the last input frame,
then each method's last frame, and under each its error map |O_t − W(O_t−1)|).

    python benchmarks/video_motion.py [--frames 8] [--size 160] [--clips pan,zoom] [--style-weights 20,60]
        [--methods "each frame on its own;still (before flow)"] [--json F] [--sheet F]
"""

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch

import nst_ext
from nst_ext.io.images import load_image
from nst_ext.jobs import FRAME_STEPS, LONG_TERM, TEMPORAL_WEIGHT, FrameChain
from nst_ext.jobs.warping import warp
from nst_ext.jobs.passes import refine_in_passes
from nst_ext.stylizer import Stylizer

from _common import STYLE
from clips import WARP_KERNELS, motion_clips, object_error, object_path_error, true_warp_difference, warping_error

DEFAULT_STYLE_WEIGHT = nst_ext.StyleOptions().style_weight

DEFAULT_METHOD = f"flow, long-term {','.join(map(str, LONG_TERM))} (default)"
CARRIED = "carried by the true motion, no repaint"
METHODS = [  # (name, coherence, long-term frames, passes)
    ("each frame on its own", None, None, 1),
    ("still (before flow)", "still", (1,), 1),
    ("flow, previous frame only", "flow", (1,), 1),
    (DEFAULT_METHOD, "flow", LONG_TERM, 1),
    ("flow, 2 passes", "flow", LONG_TERM, 2),
    ("flow, 3 passes", "flow", LONG_TERM, 3),
    (CARRIED, "carried", None, 1),
]


def sharpness(image: torch.Tensor) -> float:
    dx, dy = image[:, :, 1:] - image[:, :, :-1], image[:, 1:] - image[:, :-1]
    return float(dx.abs().mean() + dy.abs().mean())


def stylize_clip(clip, first, opening, following, styles, coherence, long_term, passes=1):
    """The clip's frames stylized after `first` (frame 0's picture); (outputs, seconds per later frame:
    with passes, the whole run's time shared among the later frames)."""
    outputs, seconds = [first], []
    if coherence == "carried":  # the reference: the warp alone, by the true motion
        for index in range(1, len(clip.frames)):
            started = time.perf_counter()
            motion, _ = clip.true_flow(index, index - 1)
            outputs.append(warp(outputs[-1], torch.from_numpy(motion.astype(np.float32))))
            seconds.append(time.perf_counter() - started)
        return outputs, seconds
    if coherence is None:  # every frame alike, the first too
        outputs = [following.run(clip.frames[0], styles, init=clip.frames[0]).tensor]
        for frame in clip.frames[1:]:
            started = time.perf_counter()
            outputs.append(following.run(frame, styles, init=frame).tensor)
            seconds.append(time.perf_counter() - started)
        return outputs, seconds
    with FrameChain(opening, following, styles, coherence, long_term, TEMPORAL_WEIGHT) as chain:
        chain.add_input(0, clip.frames[0])
        chain.add_output(0, first)
        chain.add_input(1, clip.frames[1])
        for index in range(1, len(clip.frames)):
            if index + 1 < len(clip.frames):  # as the job does: the next frame's flow runs meanwhile
                chain.add_input(index + 1, clip.frames[index + 1])
            started = time.perf_counter()
            outputs.append(chain.stylize(index).tensor)
            seconds.append(time.perf_counter() - started)
    if passes > 1:
        started = time.perf_counter()
        refine_in_passes(following, styles, clip.frames, outputs, passes, TEMPORAL_WEIGHT)
        shared = (time.perf_counter() - started) / len(seconds)
        seconds = [second + shared for second in seconds]
    return outputs, seconds


def contact_sheet(path, rows, names):
    """rows: (clip name, last input frame, [(last output, error map)] per method)."""
    from PIL import Image, ImageDraw

    from nst_ext.io.images import to_pil

    height, width = rows[0][1].shape[-2:]
    label, gap = 14, 4
    sheet = Image.new(
        "RGB", ((width + gap) * (len(names) + 1), (2 * height + label + gap) * len(rows) + label), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(["input"] + names):
        draw.text((column * (width + gap) + 2, 0), name[:26], fill="black")
    for row, (clip_name, frame, results) in enumerate(rows):
        top = label + row * (2 * height + label + gap)
        draw.text((2, top), clip_name, fill="black")
        sheet.paste(to_pil(frame), (0, top + label))
        for column, (output, error) in enumerate(results, start=1):
            sheet.paste(to_pil(output), (column * (width + gap), top + label))
            error_image = torch.from_numpy(np.clip(error * 5, 0, 1)).float()[None].expand(3, -1, -1)
            sheet.paste(to_pil(error_image), (column * (width + gap), top + label + height))
    sheet.save(path)


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=160, help="long side; the clips are 4:3")
    parser.add_argument("--clips", default=None, help="comma-separated clip names (default: all)")
    parser.add_argument(
        "--style-weights",
        default=f"{DEFAULT_STYLE_WEIGHT:g},{3 * DEFAULT_STYLE_WEIGHT:g}",
        help="each clip at each of these style weights (default: the default and three times it)",
    )
    parser.add_argument("--methods", default=None, help="method names separated by ';' (default: all)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--sheet", default=None)
    args = parser.parse_args()
    clips = motion_clips(args.frames, (args.size * 3 // 4, args.size))
    if args.clips:
        clips = [clip for clip in clips if clip.name in args.clips.split(",")]
    methods = [m for m in METHODS if args.methods is None or m[0] in args.methods.split(";")]
    if not methods:
        parser.error(f"no method named in {args.methods!r}; the methods: {'; '.join(m[0] for m in METHODS)}")
    styles = [load_image(STYLE)]
    rows, sheet_rows = [], []
    for clip, weight in [(clip, float(w)) for clip in clips for w in args.style_weights.split(",")]:
        options = nst_ext.StyleOptions(size=args.size, seed=0, style_weight=weight)
        opening = Stylizer(options)
        following = Stylizer(dataclasses.replace(options, scales=[args.size], steps=FRAME_STEPS))
        first = opening.run(clip.frames[0], styles).tensor
        floors = {kernel: warping_error(clip, clip.frames, kernel=kernel) for kernel in WARP_KERNELS}
        results = []
        for method, coherence, long_term, passes in methods:
            outputs, seconds = stylize_clip(clip, first, opening, following, styles, coherence, long_term, passes)
            row = dict(
                clip=clip.name,
                style_weight=weight,
                method=method,
                input_floor=floors["bilinear"],
                input_floor_lanczos=floors["lanczos"],
                warp=warping_error(clip, outputs),
                warp_lanczos=warping_error(clip, outputs, kernel="lanczos"),
                warp5=warping_error(clip, outputs, back=5) if len(outputs) > 5 else None,
                sharp=sharpness(outputs[-1]) / sharpness(outputs[0]),
                sharpness_last=sharpness(outputs[-1]),
                seconds_per_frame=statistics.median(seconds),
            )
            if clip.object_side:
                inside, trail, elsewhere = object_path_error(clip, outputs)
                row.update(object=object_error(clip, outputs), still_background=elsewhere)
                # A still subject's path has no background in it; the carried reference's still
                # background is exact (nothing to divide by).
                if np.isfinite(inside) and elsewhere > 0:
                    row.update(path=inside / elsewhere, trail=trail / elsewhere)
            rows.append(row)
            print(json.dumps(row), flush=True)
            results.append((outputs[-1], true_warp_difference(clip, outputs, len(outputs) - 1, 1)[0]))
        sheet_rows.append((f"{clip.name}, style weight {weight:g}", clip.frames[-1], results))
    print(
        f"\n{args.frames} frames at {args.size} px, {FRAME_STEPS} steps a later frame, temporal weight "
        f"{TEMPORAL_WEIGHT:g}; CPU {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| clip | style weight | method | warp | lanczos | warp Δ5 | path | trail | sharp | s/frame |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        warp5 = f"{row['warp5']:.4f}" if row["warp5"] is not None else "–"
        path, trail = (f"{row[key]:.2f}" if key in row else "–" for key in ("path", "trail"))
        print(
            f"| {row['clip']} (input {row['input_floor']:.4f}, {row['input_floor_lanczos']:.4f}) | "
            f"{row['style_weight']:g} | {row['method']} | {row['warp']:.4f} | {row['warp_lanczos']:.4f} | {warp5} | "
            f"{path} | {trail} | {row['sharp']:.2f} | {row['seconds_per_frame']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"frames": args.frames, "size": args.size, "torch": torch.__version__, "rows": rows}, out, indent=1
            )
    if args.sheet:
        contact_sheet(args.sheet, sheet_rows, [method for method, *_ in methods])


if __name__ == "__main__":
    main()
