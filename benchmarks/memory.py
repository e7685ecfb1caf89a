"""Peak memory of `evaluate` and `encode` on a whole split, against loading the split the old way.

    python benchmarks/memory.py --run runs/oasis-cpu --data ../shared/oasis --split train

Each measurement runs in a fresh process and reports its peak resident set size (ru_maxrss).
The baseline, in the same script, is what brainvq did before streaming: read the whole split into
memory (list of arrays, stacked) and convert it to float, as evaluation used to.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(kind: str, run: str, data: str, split: str) -> None:
    started = time.perf_counter()
    if kind == "baseline":
        from brainvq.data.dataset import load_split

        dataset = load_split(data, split, in_memory=True)
        images = dataset.images(list(range(len(dataset))))  # the old path: whole split as float
        detail = {"images": int(images.shape[0])}
    elif kind == "evaluate":
        from brainvq.evaluation.reconstruction import evaluate_run

        result = evaluate_run(run, data, split, batch_size=16)
        detail = {"images": result["images"], "ssim": result["ssim"]}
    else:
        from brainvq.pipeline import encode_run

        detail = encode_run(run, data, [split], batch_size=64)[split]
        detail = {"maps": detail["maps"]}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "peak_mb": peak_mb, "seconds": time.perf_counter() - started, **detail}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--child")
    parser.add_argument("--kinds", default="baseline,evaluate,encode")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.run, args.data, args.split)
        return
    results = {}
    for kind in args.kinds.split(","):
        command = [
            sys.executable,
            __file__,
            "--run",
            args.run,
            "--data",
            args.data,
            "--split",
            args.split,
            "--child",
            kind,
        ]
        output = (
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        )
        results[kind] = json.loads(output)
        print(json.dumps(results[kind]))
    if "baseline" in results:
        for kind in results:
            if kind != "baseline":
                ratio = results[kind]["peak_mb"] / results["baseline"]["peak_mb"]
                print(
                    f"{kind}: peak {results[kind]['peak_mb']:.0f} MB = {ratio:.2f}x the whole-split baseline "
                    f"({results['baseline']['peak_mb']:.0f} MB)"
                )


if __name__ == "__main__":
    main()
