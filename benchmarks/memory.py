"""Peak memory and time of a full default stylization at 512 and 1024 pixels; with --breakdown,
where the bytes of one stage go, with and without each technique of nst_ext.plan.memory.

CPU: the peak resident set size of a fresh `nst-ext stylize` process, and its
wall time. GPU (when present): torch.cuda.max_memory_allocated of an in-process
run, the optimisation's seconds (StylizeResult.seconds) and the call's wall
time; the first GPU run of a process also pays for CUDA's start-up, cuDNN's and
nst_ext's per-shape algorithm choices and graph capture, so each size is run
twice and both are reported.

    python benchmarks/memory.py [--sizes 512,1024] [--steps N] [--device cpu|cuda|all] [--json F]
                                [--options "--max-memory 2.5GiB"]
    python benchmarks/memory.py --breakdown [--sizes 512,1024,2048] [--json F]
    python benchmarks/memory.py --fits 8GiB,24GiB,80GiB [--device cpu|cuda]
    python benchmarks/memory.py --masked 0,2,3 [--sizes 384,512] [--json F]

--breakdown runs one stage at each size (the finest stage of a default run: 20 L-BFGS steps, so
a history of 20 pairs) in a fresh process per technique, on the CPU: resident memory after
start-up and the weights ("runtime"), what the targets add, the bytes autograd saves for the
backward pass in one forward (VGG activations: counted by a saved-tensor hook, each storage once),
the L-BFGS history (allocated and zeroed, so resident: as after a stage), and the peak of three
steps. Techniques: "before" (a 50-pair history, as before nst_ext.plan.memory), "history capped" (no
more pairs than steps: the default), "checkpointing" (VGG segments recomputed, and freed memory
released promptly, as when a budget needs it); "transient" is the peak less all that
(gradients in flight, convolution work space, the allocator's slack). Then nst_ext.plan.memory's
estimate of the same stage, and the median seconds per step.

--masked runs a 3-step stage at each size with that many style masks (0: one style, no masks;
N: N upright strips of the picture, each with the style flipped its own way), in a fresh process
each, on the CPU: its peak RSS against nst_ext.plan.memory's estimate of the stage.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

import nst_ext

DATA = os.path.join(os.path.dirname(nst_ext.__file__), "data")


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as clear:  # Linux: VmHWM starts again from VmRSS
        clear.write("5")


def one_stage(size, technique):
    """Runs in a fresh process: the breakdown of one stage (module docstring), as a dict of MiB."""
    from nst_ext.lbfgs import LBFGS
    from nst_ext.plan.memory import LBFGS_HISTORY
    from nst_ext.stylizer import Stylizer

    from nst_ext.plan.budget import release_freed_memory_promptly

    def mib(kib):
        return kib / 1024

    if technique == "checkpointing":
        release_freed_memory_promptly()  # as the stylizer does when a budget needs checkpointing
    content, style = os.path.join(DATA, "astronaut.jpg"), os.path.join(DATA, "swirls.jpg")
    stylizer = Stylizer(
        scales=[size],
        steps=20,
        device="cpu",
        checkpointing=technique == "checkpointing",
        lbfgs_history=LBFGS_HISTORY if technique == "before" else None,
    )
    images = [nst_ext.load_image(path) for path in (content, style)]
    plan = stylizer.plan(tuple(images[0].shape[-2:]), [tuple(images[1].shape[-2:])]).stages[-1].memory
    runtime = _status_kib("VmRSS")
    image, objective = stylizer.objective(content, style, size=size, plan=plan)
    targets = _status_kib("VmRSS") - runtime
    image = image.clone().requires_grad_(True)
    before_history = _status_kib("VmRSS")
    optimizer = LBFGS(
        image,
        lr=1.0,
        history_size=plan.history_size,  # allocated and zeroed: resident
        history_dtype=torch.bfloat16 if plan.history_bfloat16 else None,
    )
    history = _status_kib("VmRSS") - before_history
    evaluate = objective.evaluator(image)
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    _reset_peak()
    base = _status_kib("VmRSS")
    seconds = []
    for step in range(3):
        started = time.perf_counter()
        if step == 0:  # the bytes autograd keeps for the backward pass, counted once per storage
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                optimizer.step(evaluate)
        else:
            optimizer.step(evaluate)
        seconds.append(time.perf_counter() - started)
    saved = sum(storages.values()) / 2**20
    peak = _status_kib("VmHWM")
    return dict(
        size=size,
        technique=technique,
        pixels=f"{image.shape[-1]}x{image.shape[-2]}",
        history_pairs=plan.history_size,
        segments=len(plan.segments),
        runtime_mib=mib(runtime),
        targets_mib=mib(targets),
        saved_activations_mib=saved,
        history_mib=mib(history),
        peak_mib=mib(peak),
        transient_mib=mib(peak - base) - saved,
        estimate_mib=plan.total / 2**20,
        seconds_per_step=sorted(seconds)[1],
    )


BREAKDOWN_TECHNIQUES = ("before", "history capped", "checkpointing")


def largest_fitting(budgets, device_type):
    """For each budget, the largest square picture (in steps of 256 px) whose default run the memory
    plan fits, as planned by nst_ext.plan.memory: without checkpointing, with every lever but tiles, and
    with tiles too (then the picture-sized state is the limit)."""
    from nst_ext.plan.budget import parse_size
    from nst_ext.plan.memory import plan_stage
    from nst_ext.plan.options import StyleOptions

    options = StyleOptions()

    def fits(size, **forced):
        try:
            plan_stage(
                size,
                size,
                options.content_layers,
                options.style_layers,
                20,
                [(size, size)],
                parse_size(budget),
                device_type,
                activation_bytes=2,
                **forced,
            )
            return True
        except nst_ext.InputError:
            return False

    print(
        f"| budget | {device_type}: largest square picture without checkpointing | with checkpointing "
        "and a shorter history or bfloat16 pairs when needed | in tiles too |"
    )
    print("|---|---:|---:|---:|")
    for budget in budgets:
        sizes = [
            max((s for s in range(256, top, 256) if fits(s, **forced)), default=0)
            for forced, top in (({"checkpointing": False, "tile": 0}, 16385), ({"tile": 0}, 16385), ({}, 32769))
        ]
        print(f"| {budget} | {sizes[0]} px | {sizes[1]} px | {sizes[2]} px |")


def masked_stage(size, regions):
    """Runs in a fresh process: one 3-step stage with `regions` style masks (module docstring);
    (estimate MiB, peak RSS MiB)."""
    from nst_ext.stylizer import Stylizer

    content = nst_ext.load_image(os.path.join(DATA, "astronaut.jpg"))
    style = nst_ext.load_image(os.path.join(DATA, "swirls.jpg"))
    flips = [style, style.flip(-1), style.flip(-2), style.flip(-1, -2)]
    if regions > len(flips):
        raise SystemExit(f"--masked: at most {len(flips)} regions")
    width = content.shape[-1]
    strips = []
    for region in range(regions):
        strip = torch.zeros(1, *content.shape[-2:])
        strip[..., region * width // regions : (region + 1) * width // regions] = 1
        strips.append(strip)
    styles = flips[: max(1, regions)]
    stylizer = Stylizer(scales=[size], steps=3, device="cpu", style_masks=strips or None)
    plan = stylizer.plan(tuple(content.shape[-2:]), [tuple(s.shape[-2:]) for s in styles]).stages[-1].memory
    stylizer.run(content, styles)
    return plan.total / 2**20, _status_kib("VmHWM") / 1024


def masked(sizes, counts, json_path):
    rows = []
    print("| size | style masks | estimate (MiB) | peak RSS (MiB) | peak ÷ estimate |\n|---:|---:|---:|---:|---:|")
    for size in sizes:
        for regions in counts:
            output = subprocess.run(
                [sys.executable, __file__, "--one-masked-stage", str(size), str(regions)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            estimate, peak = json.loads(output.strip().splitlines()[-1])
            rows.append(dict(size=size, regions=regions, estimate_mib=estimate, peak_mib=peak))
            print(f"| {size} | {regions} | {estimate:.0f} | {peak:.0f} | {peak / estimate:.3f} |", flush=True)
    if json_path:
        with open(json_path, "w") as out:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, out, indent=1)


def breakdown(sizes, json_path):
    rows = []
    print(
        "| size | technique | L-BFGS pairs | runtime | targets | saved activations | history | transient | "
        "peak RSS | estimate | s/step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        for technique in BREAKDOWN_TECHNIQUES:
            output = subprocess.run(
                [sys.executable, __file__, "--one-stage", str(size), technique],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = json.loads(output.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"| {size} ({row['pixels']}) | {technique} | {row['history_pairs']} | {row['runtime_mib']:.0f} | "
                f"{row['targets_mib']:.0f} | {row['saved_activations_mib']:.0f} | {row['history_mib']:.0f} | "
                f"{row['transient_mib']:.0f} | **{row['peak_mib']:.0f}** | {row['estimate_mib']:.0f} | "
                f"{row['seconds_per_step']:.2f} |",
                flush=True,
            )
    if json_path:
        with open(json_path, "w") as out:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, out, indent=1)


def cpu_peak(size, steps, extra=()):
    with tempfile.TemporaryDirectory() as folder:
        command = (
            [
                sys.executable,
                "-m",
                "nst_ext",
                "stylize",
                os.path.join(DATA, "astronaut.jpg"),
                os.path.join(DATA, "swirls.jpg"),
                "-o",
                os.path.join(folder, "out.png"),
                "--size",
                str(size),
                "--device",
                "cpu",
                "--quiet",
            ]
            + (["--steps", str(steps)] if steps else [])
            + list(extra)
        )
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
    # ru_maxrss of the largest child so far, in KiB on Linux; sizes run in increasing order.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, seconds


def gpu_peak(size, steps):
    """(peak MiB allocated, optimisation seconds, wall seconds of the whole call)."""
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = nst_ext.Stylizer(size=size, device="cuda", **({"steps": steps} if steps else {})).run(
        os.path.join(DATA, "astronaut.jpg"), os.path.join(DATA, "swirls.jpg")
    )
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20, result.seconds, time.perf_counter() - started


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (default: the stylizer's)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "all"], default="all", help="all: the CPU, and the GPU when one is visible"
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--options", default="", help="more nst-ext stylize options for the CPU runs, one string")
    parser.add_argument("--breakdown", action="store_true", help="where one stage's bytes go (module docstring)")
    parser.add_argument(
        "--fits",
        default=None,
        metavar="SIZES",
        help="e.g. 8GiB,24GiB,80GiB: the largest picture the memory plan fits in each",
    )
    parser.add_argument(
        "--masked", default=None, metavar="N,N", help="e.g. 0,2,3: a stage's peak against its plan with N style masks"
    )
    parser.add_argument("--one-stage", nargs=2, metavar=("SIZE", "TECHNIQUE"), help=argparse.SUPPRESS)
    parser.add_argument("--one-masked-stage", nargs=2, type=int, metavar=("SIZE", "REGIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_stage:
        print(json.dumps(one_stage(int(args.one_stage[0]), args.one_stage[1])))
        return
    if args.one_masked_stage:
        print(json.dumps(masked_stage(*args.one_masked_stage)))
        return
    if args.masked:
        masked(sorted(int(s) for s in args.sizes.split(",")), [int(n) for n in args.masked.split(",")], args.json)
        return
    if args.fits:
        largest_fitting(args.fits.split(","), "cuda" if args.device == "cuda" else "cpu")
        return
    if args.breakdown:
        breakdown(sorted(int(s) for s in args.sizes.split(",")), args.json)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    rows = []
    print("| size | device | steps per stage | peak memory (MiB) | optimisation (s) | wall time (s) |")
    print("|---:|---|---|---:|---:|---:|")
    for size in sorted(int(s) for s in args.sizes.split(",")):
        stages = nst_ext.StyleOptions(size=size, steps=args.steps).stage_steps()
        if args.device in ("cpu", "all"):
            peak, seconds = cpu_peak(size, args.steps, args.options.split())
            rows.append(
                dict(size=size, device="cpu", steps=stages, options=args.options, peak_mib=peak, wall_seconds=seconds)
            )
            print(f"| {size} | cpu (RSS) | {stages} | {peak:.0f} | | {seconds:.0f} |", flush=True)
        if args.device in ("cuda", "all") and torch.cuda.is_available():
            for run in ("first", "second"):
                peak, optimisation, wall = gpu_peak(size, args.steps)
                rows.append(
                    dict(
                        size=size,
                        device=torch.cuda.get_device_name(),
                        run=run,
                        steps=stages,
                        peak_mib=peak,
                        optimisation_seconds=optimisation,
                        wall_seconds=wall,
                    )
                )
                print(
                    f"| {size} | {torch.cuda.get_device_name()} (allocated, {run} run) | {stages} | {peak:.0f} | "
                    f"{optimisation:.2f} | {wall:.2f} |",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"torch": torch.__version__, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
