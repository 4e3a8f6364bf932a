"""The command line's help, read from each script's own declarations, and a start without
TensorFlow's noise."""

import os
import subprocess
import sys

import pytest

from plumbing.command_line import help_text, quiet_tensorflow, setting_comments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("keras", "tensorflow", "jax", "torch")
# The script run as `python SCRIPT ARGS...`, then which of HEAVY it loaded: --help must answer
# before any of them loads, as it is asked for to decide what to run.
RUN_AND_LIST_HEAVY = f"""
import runpy, sys
sys.argv = sys.argv[1:]
code = None
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("exit", code, "heavy", [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)
"""


def run_for_help(script, *arguments):
    return subprocess.run([sys.executable, "-c", RUN_AND_LIST_HEAVY, script, *arguments],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


HELP_CASES = [
    (["train.py", "--help"], ["Train the article's convolutional VAE",
                              "python train.py --data_path=../shared/data/mnist.npz",
                              "optimizer --optimizer=rmsprop",
                              "--epochs=10 passes over the training images",
                              "--data_path=None (str) a named dataset's local copy",
                              "chosen on validation images); 0 = the article's plain RMSprop"]),
    (["evaluate.py", "-h"], ["Evaluate a trained run on its test split",
                             "python evaluate.py RUN_DIR --iwae_samples=256",
                             "--iwae_samples=64 K, importance samples per image"]),
    (["sample.py", "--help"], ["Generate images with a trained run",
                               "--n=64 images to draw from the prior",
                               "--interpolate=None (str) \"A,B\": two image files"]),
    (["score.py", "-h"], ["Score new images with a trained run",
                          "--percentile=99.0 an image above this percentile"]),
    (["score.py", "RUN", "a.png", "--help"], ["--masks=None (str) a folder"]),
    (["explore.py", "--help"], ["Explore a trained run in the browser",
                                "--port=8765 0: any free port"]),
    (["explore.py", "RUN", "--port=1", "-h"], ["--host=127.0.0.1 another address"]),
    (["export.py", "--help"], ["Export a run's anomaly scorer to ONNX",
                               "--check_images=16 test images on which ONNX must agree"]),
]


@pytest.mark.parametrize("arguments, expected", HELP_CASES,
                         ids=[" ".join(arguments) for arguments, _ in HELP_CASES])
def test_help_lists_every_setting_with_its_default_and_comment_without_loading_keras(
        arguments, expected):
    result = run_for_help(*arguments)
    assert result.stderr.strip().splitlines()[-1] == "exit 0 heavy []", result.stderr[-2000:]
    words = " ".join(result.stdout.split())
    for text in expected:
        assert text in words, result.stdout


def test_the_speed_benchmark_refuses_a_misspelt_or_contradictory_variant_before_timing_anything():
    # Unrefused, "+f32dens" would time plain mixed_bfloat16 under a name that says otherwise, and
    # "+bf16dense+f32dense" would time whichever of the two make_project_model applies last,
    # "float32+bf16dense" plain float32, and "+bf16convbias+bf16bias" or "+f32bias+bf16bias"
    # plain +bf16bias, and "mixed_float16+f32bias" plain mixed_float16.
    result = run_for_help("benchmarks/train_speed.py",
                          "--variants=float32,mixed_bfloat16+f32dens,bfloat16,mixed_bfloat16+xla,"
                          "mixed_bfloat16+bf16dense+f32dense,auto,float32+xla,float32+bf16dense,"
                          "mixed_bfloat16+bf16convbias,mixed_bfloat16+bf16convbias+bf16bias,"
                          "mixed_bfloat16+f32bias,mixed_bfloat16+f32bias+bf16bias,float32+f32bias,"
                          "mixed_float16+f32bias")
    assert result.stderr.strip().splitlines()[-1] == "exit 2 heavy []", result.stderr[-2000:]
    assert ("mixed_bfloat16+f32dens, bfloat16, mixed_bfloat16+bf16dense+f32dense, auto, "
            "float32+bf16dense, mixed_bfloat16+bf16convbias+bf16bias, "
            "mixed_bfloat16+f32bias+bf16bias, float32+f32bias, mixed_float16+f32bias: "
            "not a variant"
            ) in " ".join(result.stderr.split())


def test_help_text_without_a_source_still_lists_the_settings():
    text = help_text({"epochs": 10, "data_path": None}, {"data_path": str})
    assert "--epochs=10" in text and "--data_path=None (str)" in text


SOURCE = '''"""A script."""
# ------------------------------------------------------------------
# data
data_path: str = None  # a local copy; None = download
image_size = 28  # resize to this; the comment goes on
#                  on this line, indented after the hash
# model
latent_dim: int = 2
epochs = 10  # passes
RULES = {"epochs": 3}  # a dict that only names a setting
DEFAULTS = {
    "n": 64,  # images to draw
    "out": None,  # where they go
        # and more of it
    "seed": 0,
}
'''


def test_comments_are_read_from_both_kinds_of_declaration():
    comments, groups = setting_comments(SOURCE, {"data_path": None, "image_size": 28,
                                                 "latent_dim": 2, "epochs": 10})
    assert comments == {"data_path": "a local copy; None = download",
                        "image_size": "resize to this; the comment goes on on this line, "
                                      "indented after the hash",
                        "latent_dim": "", "epochs": "passes"}
    assert groups == {"data_path": "data", "latent_dim": "model"}
    comments, groups = setting_comments(SOURCE, {"n": 64, "out": None, "seed": 0})
    assert comments == {"n": "images to draw", "out": "where they go and more of it", "seed": ""}
    assert groups == {}


def test_quiet_tensorflow_keeps_what_the_user_set_and_hides_no_device(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    for name in ("CUDA_VISIBLE_DEVICES", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    # Hiding GPUs or turning oneDNN off would change what runs, and how fast, not only the log.
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and "TF_ENABLE_ONEDNN_OPTS" not in os.environ


# What TensorFlow's C++ logs at start-up: hidden by the log level, or caught while its libraries
# load (plumbing/command_line.quiet_tensorflow says why).
HIDDEN_NOISE = ("cpu_feature_guard", "This TensorFlow binary is optimized",
                "failed call to cuInit", "absl::InitializeLog", "Could not find cuda drivers")


@pytest.mark.slow
def test_tensorflow_starts_without_its_start_up_noise():
    environment = {name: value for name, value in os.environ.items()
                   if name != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it; the test is ours
    environment["KERAS_BACKEND"] = "tensorflow"
    # A function traced for seven shapes, as the evaluation's networks are for its batch sizes:
    # TensorFlow's advice about retracing is dropped, another warning of its logger is not.
    code = ("from plumbing.command_line import quiet_tensorflow; quiet_tensorflow(); "
            "import keras; keras.ops.ones((1,)); import tensorflow as tf; "
            "add_one = tf.function(lambda x: x + 1); "
            "[add_one(tf.ones((n,))) for n in range(1, 8)]; "
            "tf.get_logger().warning('a warning that matters'); print('started')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=environment)
    assert result.returncode == 0 and result.stdout == "started\n", result.stderr[-2000:]
    assert not [noise for noise in HIDDEN_NOISE if noise in result.stderr], result.stderr
    assert "retracing" not in result.stderr and "a warning that matters" in result.stderr


def test_what_keras_prints_while_it_loads_still_shows(tmp_path):
    """Only the known notices are dropped: a module's own warning, written to file descriptor 2
    while Keras loads, is written out again."""
    (tmp_path / "keras.py").write_text(
        "import os\nos.write(2, b'Could not find cuda drivers on your machine\\n')\n"
        "os.write(2, b'a warning that matters\\n')\n"
        "import types\nbackend = types.SimpleNamespace(backend=lambda: 'jax')\n")
    code = "from plumbing.command_line import quiet_tensorflow; quiet_tensorflow()"
    environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
                   "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=environment)
    assert result.returncode == 0, result.stderr
    assert "a warning that matters" in result.stderr
    assert "Could not find cuda drivers" not in result.stderr
