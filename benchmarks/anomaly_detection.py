"""What the anomaly detection finds on an inspection set, beside the baselines on the same images.

    python benchmarks/anomaly_detection.py --data_path=../shared/data/mnist.npz --epochs=10,30
    python benchmarks/anomaly_detection.py --runs runs/brick runs/grass     # runs already made
    python benchmarks/anomaly_detection.py --runs RUN --memory_seeds=0,1,2 --memory_sizes=4096,16384

The first builds an inspection set from MNIST (inspection_set.py: 1,800 training digits, a tenth
of them held out, 200 good test digits and 100 of each defect kind) and trains train.py on it
for each number of epochs. Either way, for each run it prints, from its metrics.json, the CVAE's
image AUROC, pixel AUROC and AUPRO and those of each baseline (anomaly_baselines.py), overall
and per defect kind, and the share of each kind flagged at each detector's threshold.

With --memory_seeds or --memory_sizes it instead fits each run's memory of encoder features
(feature_memory.py) again, once per seed and size, and scores the run's images with it the way
the evaluation does (the scoring chosen anew on the synthetic defects): how much the results
depend on which normal feature vectors the memory happened to draw, and on how many it keeps.
The run folders are only read.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from inspection_set import write_inspection_set  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", help="mnist.npz, to build the digits set")
    parser.add_argument("--epochs", default="10,30")
    parser.add_argument("--folder", default="/tmp/anomaly_benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="*", default=None,
                        help="report these finished inspection runs instead of training")
    parser.add_argument("--memory_seeds", help="with --runs: refit the feature memory with "
                        "these seeds, e.g. 0,1,2")
    parser.add_argument("--memory_sizes", help="with --runs: refit it at these sizes")
    args = parser.parse_args()
    if (args.memory_seeds or args.memory_sizes) and not args.runs:
        parser.error("--memory_seeds and --memory_sizes refit the memory of finished runs: "
                     "name them with --runs RUN [RUN ...]")
    if args.runs and (args.memory_seeds or args.memory_sizes):
        seeds = [int(seed) for seed in (args.memory_seeds or "0").split(",")]
        sizes = [int(size) for size in (args.memory_sizes or "0").split(",")]
        for run_dir in args.runs:
            compare_memories(run_dir, seeds, sizes)
        return
    if args.runs:
        for run_dir in args.runs:
            print_run(run_dir, run_dir)
        return
    root = os.path.join(args.folder, "set")
    if not os.path.isdir(root):
        with np.load(args.data_path) as mnist:
            write_inspection_set(root, mnist["x_train"], 1800, 200, 100, seed=args.seed)
    for epochs in [int(e) for e in args.epochs.split(",")]:
        out_dir = os.path.join(args.folder, f"run_{epochs}")
        subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "train.py"),
                        f"--dataset={root}", f"--out_dir={out_dir}", f"--epochs={epochs}",
                        f"--seed={args.seed}"], check=True, capture_output=True)
        print_run(out_dir, f"{epochs} epochs")


def print_run(run_dir, name):
    """One markdown table of the run: each detector, overall and per defect kind."""
    with open(os.path.join(run_dir, "metrics.json")) as f:
        anomaly = json.load(f)["anomaly"]
    detectors = {"CVAE": anomaly, **anomaly["baselines"]}
    print(f"\n{name}: the CVAE's scoring {anomaly['scoring']}")
    print("| detector | kind | image AUROC | pixel AUROC | AUPRO | flagged |")
    print("| --- | --- | --- | --- | --- | --- |")
    for detector, result in detectors.items():
        good = f"{100 * result['flagged_good']:.1f}% of good"
        print(f"| {detector} | all defects | {result['image_auroc']:.3f} | "
              f"{result.get('pixel_auroc', float('nan')):.3f} | "
              f"{result.get('pixel_aupro', float('nan')):.3f} | "
              f"{100 * result['flagged_defective']:.1f}%, {good} |")
        for kind, values in result["per_defect"].items():
            print(f"| {detector} | {kind} | {values['image_auroc']:.3f} | "
                  f"{values.get('pixel_auroc', float('nan')):.3f} | "
                  f"{values.get('pixel_aupro', float('nan')):.3f} | "
                  f"{100 * values['flagged']:.1f}% |")


def compare_memories(run_dir, seeds, sizes):
    """One markdown table of the run: the CVAE's chosen map and metrics with its feature memory
    fitted at each seed and size (size 0: feature_memory.MEMORY_SIZE). The seconds are the
    whole row's: fitting the memory, then scoring with the CVAE and the baselines."""
    sys.path.insert(0, os.path.dirname(HERE))
    import anomaly
    import feature_memory
    from data import load_dataset_of_run
    from patches import patch_size_of
    from saved_run import load_run

    config, model = load_run(run_dir)
    data = load_dataset_of_run(config, run_dir)
    patch_size = patch_size_of(model, data.image_shape)
    print(f"\n{run_dir}: the CVAE with its feature memory fitted again")
    print("| memory size | seed | chosen map | validation pixel / image | image AUROC | "
          "pixel AUROC | AUPRO | good / defective flagged | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in sizes:
        size = size or feature_memory.MEMORY_SIZE
        for seed in seeds:
            start = time.perf_counter()
            memory = feature_memory.fit_feature_memory(model, data.x_train, patch_size, size, seed)
            result, _ = anomaly.inspection_metrics(model, data, memory)
            scoring, chosen = result["scoring"], result["validation"]["chosen"]["cvae"]
            print(f"| {size} | {seed} | {scoring['pixel_map']}, {scoring['image_score']} | "
                  f"{chosen['pixel_auroc']:.3f} / {chosen['image_auroc']:.3f} | "
                  f"{result['image_auroc']:.3f} | {result['pixel_auroc']:.3f} | "
                  f"{result['pixel_aupro']:.3f} | {100 * result['flagged_good']:.1f}% / "
                  f"{100 * result['flagged_defective']:.1f}% | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
