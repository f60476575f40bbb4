"""Images per minute of `nst-ext batch` on a folder of pictures, against one `nst-ext stylize`
process per picture (what a shell loop does); one picture at a time against several optimised
together in one VGG batch (`--batch-size N`); and one process against two under torchrun (gloo,
one thread each); in one run, on this machine.

    python benchmarks/batch_throughput.py [--images 8] [--size 128] [--device cpu|auto]
        [--batch-sizes 4,8] [--json F]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from PIL import Image

import nst_ext

DATA = os.path.join(os.path.dirname(nst_ext.__file__), "data")


def make_folder(folder, count):
    photo = Image.open(os.path.join(DATA, "astronaut.jpg")).convert("RGB")
    for index in range(count):
        box = (index * 16, index * 8, index * 16 + 384, index * 8 + 320)
        photo.crop(box).save(os.path.join(folder, f"photo{index:02d}.jpg"))


def timed(command, env=None):
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--device", default="cpu", help="cpu, or auto: each process on its own GPU where there are GPUs"
    )
    parser.add_argument("--batch-sizes", default="4,8", help="the --batch-size values to measure besides 1")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []

    def measured(row):  # printed as it comes, so a run stopped at a time limit still shows its rows
        rows.append(row)
        print(f"measured: {row['method']}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)

    style = os.path.join(DATA, "swirls.jpg")
    common = ["--size", str(args.size), "--device", args.device, "--quiet"]
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "in")
        os.mkdir(source)
        make_folder(source, args.images)
        names = sorted(os.listdir(source))
        seconds = sum(
            timed(
                [
                    sys.executable,
                    "-m",
                    "nst_ext",
                    "stylize",
                    os.path.join(source, name),
                    style,
                    "-o",
                    os.path.join(folder, f"single-{name}.png"),
                    *common,
                ]
            )
            for name in names
        )
        measured(dict(method="one `nst-ext stylize` process per picture", seconds=seconds))
        for batch_size in [1] + [int(n) for n in args.batch_sizes.split(",") if n]:
            seconds = timed(
                [
                    sys.executable,
                    "-m",
                    "nst_ext",
                    "batch",
                    source,
                    style,
                    "-o",
                    os.path.join(folder, f"one-{batch_size}"),
                    "--batch-size",
                    str(batch_size),
                    *common,
                ]
            )
            measured(
                dict(
                    method=f"`nst-ext batch --batch-size {batch_size}`, one process",
                    seconds=seconds,
                    batch_size=batch_size,
                )
            )
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // 2)))
        seconds = timed(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "nst_ext",
                "batch",
                source,
                style,
                "-o",
                os.path.join(folder, "two"),
                "--batch-size",
                "1",
                *common,
            ],
            env=env,
        )
        measured(dict(method="`nst-ext batch --batch-size 1` under torchrun, 2 processes", seconds=seconds))
    print(
        f"{args.images} pictures at {args.size} px (default settings), CPU {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print("| method | wall time (s) | pictures per minute |")
    print("|---|---:|---:|")
    for row in rows:
        row["per_minute"] = 60 * args.images / row["seconds"]
        print(f"| {row['method']} | {row['seconds']:.1f} | {row['per_minute']:.2f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"images": args.images, "size": args.size, "torch": torch.__version__, "rows": rows}, out, indent=1
            )


if __name__ == "__main__":
    main()
