"""What the live view (`--web`) costs a run: the same picture made with and without a LiveView
observing every step and a page reading its event stream, alternately, in one process.

    python benchmarks/web_preview.py [--sizes 256,512] [--repeats 5] [--json F]

Each run is the default schedule at that size (the demo images, a fixed seed); the figure is the
median seconds of each and their ratio (the goal: at most 1.05)."""

import argparse
import json
import statistics
import threading
import time
import urllib.request

import torch

from _common import CONTENT, STYLE

import nst_ext
from nst_ext.web.live import LiveView


def _read_events(url, stop):
    """A page's share: the event stream read until the run ends. Returns the events counted."""
    count = [0]

    def read():
        with urllib.request.urlopen(url + "events", timeout=600) as stream:
            for line in stream:
                if line.startswith(b"data: "):
                    count[0] += 1
                if stop.is_set():
                    return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, count


def one_run(size, watched):
    stylizer = nst_ext.Stylizer(size=size, seed=0, device="cpu")
    live = LiveView() if watched else None
    stop = threading.Event()
    reader = _read_events(live.url, stop) if watched else None
    started = time.perf_counter()
    result = stylizer.run(CONTENT, STYLE, callback=live.observe if watched else None)
    seconds = time.perf_counter() - started
    events = 0
    if watched:
        live.close(result.tensor)
        stop.set()
        reader[0].join(10)
        events = reader[1][0]
    return seconds, events


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda t: [int(s) for s in t.split(",")], default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = {"machine": nst_ext.backend_info(), "cpu_threads": torch.get_num_threads(), "sizes": []}
    for size in args.sizes:
        one_run(size, False)  # warm-up: weights, oneDNN's kernels for these shapes
        plain, watched, events = [], [], []
        for _ in range(args.repeats):
            plain.append(one_run(size, False)[0])
            seconds, count = one_run(size, True)
            watched.append(seconds)
            events.append(count)
        row = {
            "size": size,
            "plain_s": plain,
            "watched_s": watched,
            "events": events,
            "plain_median_s": statistics.median(plain),
            "watched_median_s": statistics.median(watched),
        }
        row["ratio"] = row["watched_median_s"] / row["plain_median_s"]
        print(
            f"{size} px: plain {row['plain_median_s']:.2f} s, with --web {row['watched_median_s']:.2f} s "
            f"(x{row['ratio']:.3f}; {statistics.median(events):.0f} events a run)",
            flush=True,
        )
        report["sizes"].append(row)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
