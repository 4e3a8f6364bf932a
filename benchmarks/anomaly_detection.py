"""What the anomaly detection finds on an inspection set, beside the baselines on the same images.

    python benchmarks/anomaly_detection.py --data_path=../shared/data/mnist.npz --epochs=10,30
    python benchmarks/anomaly_detection.py --runs runs/brick runs/grass     # runs already made

The first builds an inspection set from MNIST (inspection_set.py: 1,800 training digits, a tenth
of them held out, 200 good test digits and 100 of each defect kind) and trains train.py on it
for each number of epochs. Either way, for each run it prints, from its metrics.json, the CVAE's
image AUROC, pixel AUROC and AUPRO and those of each baseline (anomaly_baselines.py), overall
and per defect kind, and the share of each kind flagged at each detector's threshold.
"""

import argparse
import json
import os
import subprocess
import sys

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
    args = parser.parse_args()
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

if __name__ == "__main__":
    main()
