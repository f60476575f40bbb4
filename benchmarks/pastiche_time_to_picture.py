"""Time to an equal picture against pastiche on this CPU, in one run.

For each pair: nst_ext at its defaults, timed and judged (nst_ext.metrics.subject_and_style); then
pastiche 1.6.0 at its defaults (max pooling, L-BFGS, its weights) at the same size, stepped one
L-BFGS iteration at a time and judged every `--judge-every` steps (judging is not timed), until its
picture is at least as near the content and as near the style as ours (both figures no higher), or
until its default 1000 steps or `--seconds` run out. Reports both times and pastiche's time for its
full default run (measured where it ran to the end, else its median step time × 1000, marked).

    python benchmarks/pastiche_time_to_picture.py --size 256 --pairs demo,1 --json out.json
"""

import argparse
import json
import statistics
import time

import torch

import nst_ext
from nst_ext.io.images import resize_to_long_side
from nst_ext.metrics import subject_and_style
from nst_ext.stylizer import Stylizer

from quality import PAIRS, PANEL
from time_to_picture import DEMO

PASTICHE_DEFAULT_STEPS = 1000


def pastiche_image(artist) -> torch.Tensor:
    """pastiche's image (Caffe's BGR, mean-subtracted, 0-255) as (3, H, W) RGB in [0, 1]."""
    from pastiche.pastiche import VGG_MEAN

    x = artist.pastiche.detach()[0].cpu().clone()
    for channel, shift in enumerate(VGG_MEAN):
        x[channel] += shift
    return (x[[2, 1, 0]] / 255.0).clamp(0, 1)


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pairs", default="demo,1")
    parser.add_argument("--judge-every", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=900, help="pastiche's time limit per pair")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from pastiche.pastiche import PasticheArtist

    judge = Stylizer(size=args.size, device="cpu", mixed_precision=False).vgg
    report = {"size": args.size, "torch": torch.__version__, "threads": torch.get_num_threads(), "pairs": []}
    for item in args.pairs.split(","):
        paths = DEMO if item == "demo" else tuple(f"{PANEL}/{name}.jpg" for name in PAIRS[int(item)][:2])
        images = [nst_ext.load_image(p) for p in paths]
        ours = Stylizer(size=args.size, device="cpu").run(*images)
        ours_figures = subject_and_style(judge, ours.tensor, *images)
        print(
            f"{paths[0].rsplit('/', 1)[-1]} / {paths[1].rsplit('/', 1)[-1]}: nst_ext {ours.seconds:.1f} s, "
            f"subject {ours_figures[0]:.3f} style {ours_figures[1]:.3f}",
            flush=True,
        )
        artist = PasticheArtist(paths[0], [paths[1]], device="cpu", size=args.size)
        step_seconds, trace, reached = [], [], None
        while len(step_seconds) < PASTICHE_DEFAULT_STEPS and sum(step_seconds) < args.seconds:
            started = time.perf_counter()
            artist.draw()
            step_seconds.append(time.perf_counter() - started)
            if len(step_seconds) % args.judge_every == 0:
                picture = resize_to_long_side(pastiche_image(artist), max(ours.tensor.shape[-2:]))
                figures = subject_and_style(judge, picture, *images)
                trace.append(
                    {
                        "steps": len(step_seconds),
                        "seconds": sum(step_seconds),
                        "subject": figures[0],
                        "style": figures[1],
                    }
                )
                print(
                    f"  pastiche {len(step_seconds):4d} steps {sum(step_seconds):7.1f} s  subject {figures[0]:.3f} "
                    f"style {figures[1]:.3f}",
                    flush=True,
                )
                if figures[0] <= ours_figures[0] and figures[1] <= ours_figures[1]:
                    reached = trace[-1]
                    break
        full = len(step_seconds) == PASTICHE_DEFAULT_STEPS
        report["pairs"].append(
            {
                "content": paths[0],
                "style": paths[1],
                "nst_ext_seconds": ours.seconds,
                "nst_ext_subject": ours_figures[0],
                "nst_ext_style": ours_figures[1],
                "pastiche_trace": trace,
                "pastiche_equal_picture": reached,
                "pastiche_default_seconds": sum(step_seconds)
                if full
                else statistics.median(step_seconds) * PASTICHE_DEFAULT_STEPS,
                "pastiche_default_seconds_estimated": not full,
            }
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
