"""What the anomaly detection finds on an inspection set made from MNIST (inspection_set.py),
and what a small set needs: train.py on it for several numbers of epochs, then its metrics.

    python benchmarks/anomaly_detection.py --data_path=../shared/data/mnist.npz --epochs=10,30

Each run trains on train/good (1,800 digits, a tenth of them held out for the threshold) and is
evaluated on 200 good and 100 of each defect kind. Prints one table row per run and per kind.
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
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--epochs", default="10,30")
    parser.add_argument("--folder", default="/tmp/anomaly_benchmark")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = os.path.join(args.folder, "set")
    if not os.path.isdir(root):
        with np.load(args.data_path) as mnist:
            write_inspection_set(root, mnist["x_train"], 1800, 200, 100, seed=args.seed)
    print("| epochs | kind | image AUROC | image AUPR | pixel AUROC | AUPRO | flagged |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for epochs in [int(e) for e in args.epochs.split(",")]:
        out_dir = os.path.join(args.folder, f"run_{epochs}")
        subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "train.py"),
                        f"--dataset={root}", f"--out_dir={out_dir}", f"--epochs={epochs}",
                        f"--seed={args.seed}"], check=True, capture_output=True)
        with open(os.path.join(out_dir, "metrics.json")) as f:
            anomaly = json.load(f)["anomaly"]
        print(f"| {epochs} | all defects | {anomaly['image_auroc']:.3f} | "
              f"{anomaly['image_aupr']:.3f} | {anomaly['pixel_auroc']:.3f} | "
              f"{anomaly['pixel_aupro']:.3f} | {100 * anomaly['flagged_defective']:.1f}% of "
              f"defective, {100 * anomaly['flagged_good']:.1f}% of good |")
        for kind, values in anomaly["per_defect"].items():
            print(f"| {epochs} | {kind} | {values['image_auroc']:.3f} | "
                  f"{values['image_aupr']:.3f} | {values.get('pixel_auroc', float('nan')):.3f} | "
                  f"{values.get('pixel_aupro', float('nan')):.3f} | |")
        alternative = anomaly["alternative"]
        print(f"| {epochs} | all, by the largest smoothed pixel loss | "
              f"{alternative['image_auroc']:.3f} | {alternative['image_aupr']:.3f} | | | |")


if __name__ == "__main__":
    main()
