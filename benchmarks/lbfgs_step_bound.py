"""L-BFGS's longest step (nst_ext.plan.options.LBFGS_MAX_STEP_RMS): runs with and without the bound.

With no line search, L-BFGS now and then takes a step far longer than any before it. On a picture
that throws most pixels past 0 or 1, where the clamped loss gives them no gradient, and the stage
never comes back. Two yardsticks, neither built with the bound:

--draws A:B   the setting where that was first seen (tests/test_masks.py: one style image holding two
              textures, style-image masks choosing each region's, flat gray content, style weight
              200; 30 + 20 steps at 64 and 96 px), for each draw of the textures: the loss at the end
              of the 64 px stage, the largest rise from one step to the next, the longest step.
--panel SIZE  the quality panel's pairs at the default options: the longest step of each run, and
              whether the bound changed the picture at all.

    python benchmarks/lbfgs_step_bound.py --draws 0:40 --panel 256 --json benchmarks/results/cpu-lbfgs-step-bound.json
"""

import argparse
import json

import torch

import nst_ext
import nst_ext.stylizer as stylizer_module
from nst_ext.lbfgs import LBFGS
from nst_ext.plan.options import LBFGS_MAX_STEP_RMS
from nst_ext.stylizer import Stylizer

# The content is flat gray: a style weight at which the textures form within few steps (at the
# default, 50 steps leave each region about halfway, too close to call on every draw).
STRONG_STYLE_WEIGHT = 200.0


def texture(kind: str, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Two textures far apart in VGG's statistics: coarse red blotches, sparse fine blue dots;
    ``(3, height, width)`` float32 in [0, 1]."""
    if kind == "blotches":
        coarse = torch.rand(1, 1, height // 8, width // 8, generator=generator)
        red = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")[0, 0].clamp(0, 1)
        return torch.stack([0.3 + 0.7 * red, 0.25 * red, 0.05 + 0 * red])
    dots = (torch.rand(height, width, generator=generator) > 0.85).float()
    return torch.stack([0.1 * torch.ones(height, width), 0.2 * torch.rand(height, width, generator=generator), dots])


def source_masked_setting(draw: int):
    """The style-image-mask setting for one draw: (content, [style, style], the two textures, the
    Stylizer options). The style image holds both textures side by side; the left half of the
    picture takes the dots (the right of the style image), the right half the blotches."""
    generator = torch.Generator().manual_seed(draw)
    blotches, dots = texture("blotches", 64, 64, generator), texture("dots", 64, 64, generator)
    both = torch.cat([blotches, dots], dim=-1)  # (3, 64, 128)
    source_left = torch.zeros(64, 128)
    source_left[:, :64] = 1
    height, width = 72, 96
    content = (0.5 + 0.05 * torch.randn(3, height, width, generator=generator)).clamp(0, 1)
    left = torch.zeros(height, width)
    left[:, : width // 2] = 1
    options = dict(
        scales=[64, 96],
        steps=[30, 20],
        style_weight=STRONG_STYLE_WEIGHT,
        seed=0,
        device="cpu",
        style_masks=[1 - left, left],
        style_image_masks=[source_left, 1 - source_left],
    )
    return content, [both, both], (blotches, dots), options


class StepLengths:
    """While active, every L-BFGS the stylizer makes records the root-mean-square change of each
    step, and is bounded by `bound` (None: no bound)."""

    def __init__(self, bound):
        self.bound, self.lengths = bound, []

    def __enter__(self):
        recorder = self

        class Recorded(LBFGS):
            def __init__(self, *args, **options):
                super().__init__(*args, **{**options, "max_step_rms": recorder.bound})

            def _update(self):
                super()._update()
                recorder.lengths.append(float(self.last_step.square().mean().sqrt()))

        self.original, stylizer_module.LBFGS = stylizer_module.LBFGS, Recorded
        return self

    def __exit__(self, *exc):
        stylizer_module.LBFGS = self.original


def run(bound, content, styles, options):
    with StepLengths(bound) as steps:
        result = Stylizer(**options).run(content, styles)
    totals = [entry["total"] for entry in result.history]
    return result, totals, steps.lengths


def draws(first: int, last: int):
    rows = []
    for draw in range(first, last):
        content, styles, _, options = source_masked_setting(draw)
        row = {"draw": draw}
        for name, bound in (("unbounded", None), ("bounded", LBFGS_MAX_STEP_RMS)):
            _, totals, lengths = run(bound, content, styles, options)
            first_stage = options["steps"][0]
            row[name] = {
                "first_stage_end": totals[first_stage - 1],
                "end": totals[-1],
                "largest_rise": max(b / a for a, b in zip(totals[:first_stage], totals[1:first_stage])),
                "longest_step": max(lengths),
            }
        rows.append(row)
        print(
            f"draw {draw:3d}: "
            + "  ".join(
                f"{name} {row[name]['first_stage_end']:8.1f} at 64 px (rise ×{row[name]['largest_rise']:.1f}, "
                f"step {row[name]['longest_step']:.3f})"
                for name in ("unbounded", "bounded")
            ),
            flush=True,
        )
    return rows


def panel(size: int):
    from quality import PAIRS, panel_image

    rows = []
    for content_name, style_name, _ in PAIRS:
        content, style = panel_image(content_name), panel_image(style_name)
        options = dict(size=size, device="cpu", seed=0)
        free, free_totals, lengths = run(None, content, style, options)
        bounded, bounded_totals, _ = run(LBFGS_MAX_STEP_RMS, content, style, options)
        row = {
            "pair": f"{content_name}/{style_name}",
            "longest_step": max(lengths),
            "end": free_totals[-1],
            "same_picture": bool(torch.equal(free.tensor, bounded.tensor)),
            "bounded_end": bounded_totals[-1],
        }
        rows.append(row)
        print(
            f"{row['pair']:>16}: longest step {row['longest_step']:.3f}, same picture {row['same_picture']}", flush=True
        )
    return rows


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", default=None, metavar="A:B")
    parser.add_argument("--panel", type=int, default=None, metavar="SIZE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = {"bound": LBFGS_MAX_STEP_RMS, "threads": torch.get_num_threads()}
    if args.draws:
        first, last = (int(part) for part in args.draws.split(":"))
        report["draws"] = draws(first, last)
    if args.panel:
        report["panel"] = panel(args.panel)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
