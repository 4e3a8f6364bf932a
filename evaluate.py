"""Evaluate a finished run again, without retraining: metrics.json and every figure.

    python evaluate.py                 # the run in outputs/
    python evaluate.py RUN_DIR --iwae_samples=256 --iwae_images=2000

The model is rebuilt from RUN_DIR/config.json and its weights (run_files.load_run), the test split
is loaded again from the same source with the same settings, and report.evaluate_run writes the
same files train.py writes at its end.
"""

import os


def main(argv):
    from configurator import parse_overrides
    from report import EVALUATION_DEFAULTS, check_settings

    run_dir = "outputs"
    if argv and not argv[0].startswith("--"):
        run_dir, argv = argv[0], argv[1:]
    settings = parse_overrides(EVALUATION_DEFAULTS, argv, {})
    check_settings(settings)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from data import load_dataset_of_run
    from report import evaluate_run
    from run_files import load_run, require_same_data

    config, model = load_run(run_dir)
    data = load_dataset_of_run(config)
    # The training count is left out: holdout_class and train_subset change it after loading.
    summary = {key: value for key, value in data.summary().items() if key != "train_images"}
    require_same_data(run_dir, config.get("data"), summary)
    evaluate_run(model, config, data, run_dir, settings)
    print(f"Figures and metrics.json written to {run_dir}/")
    return 0


if __name__ == "__main__":
    from configurator import run_command

    run_command(main)
