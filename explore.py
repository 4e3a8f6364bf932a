"""Explore a trained run in the browser: move through its latent space, draw or drop an image,
and see its score and uncertainty, live.

    python explore.py RUN_DIR                  # then open the address it prints
    python explore.py RUN_DIR --port=8000 --host=0.0.0.0

The page (web/) shows every test image's z_mean on the latent plane, decodes the point under
the pointer, and scores a test image that is clicked or an image that is dropped, drawn or
picked: its negative ELBO in nats and its percentile among the run's test scores, its anomaly
score, the `anomalous` flag, its uncertainty map and the per-pixel loss that its anomaly score
sums. An image goes through the run's own preprocessing, measures.negative_elbo_of_new_images
and anomaly.py's scorer, so its numbers are the ones score.py gives for the same file. The test
split's latents are computed once and kept in RUN_DIR/explorer_cache.npz, the only file this
command writes. It serves on 127.0.0.1 unless --host says otherwise.
"""

import base64
import io
import os
import sys
import threading
import time

import numpy as np

from data import as_the_run_sees, load_dataset_of_run
from plumbing.command_line import (
    check_rules,
    parse_overrides,
    quiet_tensorflow,
    run_command,
    split_run_dir,
)
from plumbing.errors import ConfigError, DataError, require

EXPLORE_DEFAULTS = {
    "port": 8765,  # 0: any free port
    "host": "127.0.0.1",  # another address lets anyone on that network use the page
    "percentile": 99.0,  # an image above this percentile of the test scores is anomalous
    "samples": 16,  # K, draws from q(z|x) for the uncertainty map
    "seed": 0,  # seeds each image's z sample (as score.py's --seed) and the maps' draws
    "path_steps": 10,  # images on a decoded path, both ends included
}
EXPLORE_RULES = (
    ("port", lambda value: 0 <= value <= 65535, "0 (any free port) to 65535"),
    ("percentile", lambda value: 0 < value < 100, "between 0 and 100"),
    ("samples", lambda value: 1 <= value <= 1000, "1 to 1000"),
    ("seed", lambda value: 0 <= value < 2**32, "in 0 .. 2**32 - 1"),
    ("path_steps", lambda value: 2 <= value <= 50, "2 to 50"),
)
USAGE = "python explore.py RUN_DIR [--port=8765]"
LOOPBACK = ("127.0.0.1", "localhost")
PAGE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
PAGE_FILES = ("page.js", "page.css")


def main(argv):
    started = time.perf_counter()
    run_dir, argv = split_run_dir(argv, USAGE)
    settings = parse_overrides(EXPLORE_DEFAULTS, argv, {}, source=__file__)
    check_rules(settings, EXPLORE_RULES)
    if settings["host"] not in LOOPBACK:
        print(f"warning: serving on {settings['host']}, not 127.0.0.1: anyone who can reach "
              f"this machine on that network can use the page and the model.", file=sys.stderr)
    quiet_tensorflow()
    from plumbing import run_folder, web_server
    from saved_run import load_run

    config, model = load_run(run_dir)
    run_folder.require_whole_image_model(
        config, "The explorer shows whole images beside their codes",
        f"score its images with `python score.py {run_dir} IMAGES`")
    explorer = Explorer(model, config, run_dir, settings)
    figures = run_folder.FIGURE_FILES + (run_folder.RECONSTRUCTIONS_FILE, run_folder.GIF_FILE)

    def say_ready(address):
        print(f"Exploring {run_dir} at {address} (ready {time.perf_counter() - started:.1f} s "
              f"after start). Ctrl-C stops it.", flush=True)

    try:
        web_server.serve(explorer, PAGE_FOLDER, PAGE_FILES, run_dir, figures, settings["host"],
                         settings["port"], say_ready)
    except OSError as error:
        raise ConfigError(f"Cannot listen on {settings['host']}:{settings['port']} "
                          f"({error.strerror}): choose another --port (0 takes any free one), "
                          f"or stop what uses it.") from None
    except KeyboardInterrupt:
        print("\nStopped.")
    return 0


class Explorer:
    """What the page asks of a run: get(name, query) and post(name, query, body) answer
    /api/NAME with a dict. Model calls are serialized: the server answers in threads."""

    def __init__(self, model, config, run_dir, settings):
        import anomaly
        import measures
        from plumbing.image_files import prepare_file
        from plumbing.run_folder import anomaly_rule, image_shape_of, read_test_scores

        self.measures, self.anomaly, self.prepare_file = measures, anomaly, prepare_file
        self.model, self.config, self.settings, self.run_dir = model, config, settings, run_dir
        self.image_shape = image_shape_of(config)
        self.lock = threading.Lock()
        self.test_scores = read_test_scores(run_dir)
        # `anomalous` means what it means in score.py: for an inspection run, the deterministic
        # anomaly score above the threshold kept with it.
        self.rule = anomaly_rule(run_dir, self.test_scores, settings["percentile"])
        self.scorer = anomaly.build_anomaly_scorer(model, scoring=self.rule["scoring"],
                                                   feature_memory=self.rule["feature_memory"])
        self.data, self.data_error, self.data_ready = None, None, threading.Event()
        self.z_mean, self.z_log_var, self.labels = cached_latents(self)
        self.dims = measures.most_informative_dims(
            measures.latent_activity(self.z_mean, self.z_log_var)["kl_per_dimension"])
        threading.Thread(target=self._load_data, daemon=True).start()
        # One decode now, so that the first under the pointer does not wait for its compilation.
        self._decode(np.zeros((1, self.z_mean.shape[1]), "float32"), self._label(0, 1))

    # ---- the answers -----------------------------------------------------------------------
    def get(self, name, query):
        answers = {"info": self.info, "latents": self.latents,
                   "test_point": lambda: self.test_point(query)}
        if name not in answers:
            raise ConfigError(f"There is no /api/{name}.")
        return answers[name]()

    def post(self, name, query, body):
        answers = {"decode": self.decode, "path": self.path, "score": self.score}
        if name not in answers:
            raise ConfigError(f"There is no /api/{name}.")
        return answers[name](query, body)

    def info(self):
        names = self.config.get("data", {}).get("class_names")
        return {"image_shape": list(self.image_shape), "latent_dim": int(self.z_mean.shape[1]),
                "dims": self.dims, "class_names": names,
                "conditional": bool(self.model.conditional),
                "rule": f"{self.rule['column']} over {self.rule['threshold']:.4g}"
                        f"{self.rule['unit']}, "
                        f"{self.rule['why']}",
                "test_images": len(self.test_scores), "samples": self.settings["samples"],
                "architecture": self.config.get("architecture", "article")}

    def latents(self):
        shown = self.z_mean[:, self.dims]
        return {"x": shown[:, 0].round(4).tolist(), "y": shown[:, 1].round(4).tolist(),
                "labels": None if self.labels is None else self.labels.tolist()}

    def decode(self, query, body):
        request = _json_body(body)
        z = _finite_array(request.get("z"), "decode's z")
        require(z.ndim == 2 and z.shape[1] == self.z_mean.shape[1] and 1 <= len(z) <= 100,
                f"decode takes 1 to 100 codes of {self.z_mean.shape[1]} numbers.")
        return {"images": [_image_json(image) for image in
                           self._decode(z, self._label(request.get("label"), len(z)))]}

    def path(self, query, body):
        request = _json_body(body)
        ends = _finite_array([request.get("start"), request.get("end")], "a path's ends")
        require(ends.shape == (2, self.z_mean.shape[1]),
                f"path takes a start and an end of {self.z_mean.shape[1]} numbers each.")
        line = self.measures.straight_line(ends[0], ends[1], self.settings["path_steps"])
        images = self._decode(line, self._label(request.get("label"), len(line)))
        return {"images": [_image_json(image) for image in images]}

    def test_point(self, query):
        index = int(query["index"]) if str(query.get("index", "")).isdecimal() else -1
        require(0 <= index < len(self.test_scores),
                f"index must be 0 to {len(self.test_scores) - 1}, not {index}.")
        require(self.data_ready.wait(timeout=120), "The test images are still loading.")
        if self.data_error is not None:
            raise self.data_error
        x = self.data.x_test[index:index + 1]
        labels = None if not self.model.conditional else self.labels[index:index + 1]
        answer = self._explain(x, labels, self.z_mean[index:index + 1])
        answer.update(self._numbers(float(self.test_scores[index]), answer["anomaly_score"]),
                      index=index,
                      label=None if self.labels is None else int(self.labels[index]),
                      z_mean=self.z_mean[index].tolist())
        return answer

    def score(self, query, body):
        from plumbing.image_files import UNREADABLE

        require(len(body) > 0, "The upload is empty: give an image file.")
        try:
            pixels = self.prepare_file(io.BytesIO(body), self.image_shape[:2],
                                       self.image_shape[2])
        except UNREADABLE as error:
            raise DataError(f"This file cannot be read as an image ({type(error).__name__}: "
                            f"{str(error)[:200]}). Give a PNG, JPEG, BMP or GIF file.") from None
        labels = self._label(query.get("label"), 1)
        x = as_the_run_sees(pixels[None], self.config)
        with self.lock:
            scores, z_mean, z_log_var = self.measures.negative_elbo_of_new_images(
                self.model, x, self.settings["seed"], labels)
        answer = self._explain(x, labels, z_mean)
        answer.update(self._numbers(float(scores[0]), answer["anomaly_score"]),
                      z_mean=z_mean[0].tolist(),
                      z_sigma=np.exp(0.5 * z_log_var[0]).tolist())
        return answer

    # ---- helpers ---------------------------------------------------------------------------
    def _numbers(self, score, anomaly_score):
        """The image's negative ELBO ranked among the test split's, and whether it is anomalous
        by the run's rule (run_folder.anomaly_rule)."""
        compared = anomaly_score if self.rule["column"] == "anomaly_score" else score
        return {"score": score,
                "bits_per_dim": self.measures.bits_per_dim(score, self.image_shape,
                                                           self.model.likelihood),
                "percentile": float(100.0 * np.mean(self.test_scores <= score)),
                "anomalous": bool(compared > self.rule["threshold"])}

    def _explain(self, x, labels, z_mean):
        """The image, its reconstruction from z_mean, its uncertainty map, and its anomaly score
        and the per-pixel loss it sums (anomaly.py's scorer)."""
        rng = np.random.default_rng(self.settings["seed"])
        with self.lock:
            reconstruction = self.measures.decode(self.model, z_mean, labels=labels)[0]
            spread = self.measures.decoded_spread(self.model, x, self.settings["samples"], rng,
                                                  labels=labels)
            anomaly_score, loss = self.anomaly.anomaly_scores(self.scorer, x, labels)
        return {"image": _image_json(x[0]), "reconstruction": _image_json(reconstruction),
                "uncertainty": _map_json(spread[0]), "loss": _map_json(loss[0]),
                "anomaly_score": float(anomaly_score[0])}

    def _decode(self, z, labels):
        with self.lock:
            return self.measures.decode(self.model, z, labels=labels)

    def _label(self, value, count):
        if not self.model.conditional:
            return None
        names = self.config["data"]["class_names"]
        require(value not in (None, ""), "This run is conditional: choose a class first.")
        require(str(value).isdecimal() and int(value) < len(names),
                f"label must be 0 to {len(names) - 1}, not {value!r}.")
        return np.full(count, int(value), "int32")

    def _load_data(self):
        """In the background, so that the page is usable while the test images load."""
        try:
            if self.data is None:
                self.data = load_dataset_of_run(self.config, self.run_dir)
        except Exception as error:  # shown on the page at the first click, not a 500
            self.data_error = (error if isinstance(error, (DataError, ConfigError)) else
                               DataError(f"The test images could not be loaded "
                                         f"({type(error).__name__}: {error})."))
        finally:
            self.data_ready.set()


def cached_latents(explorer):
    """(z_mean, z_log_var, labels) of the test split: from RUN_DIR/explorer_cache.npz when it
    was made from the same weights and test split, else computed and written atomically."""
    from plumbing.atomic_files import write_atomically
    from plumbing.run_folder import EXPLORER_CACHE_FILE, WEIGHTS_FILE

    run_dir = explorer.run_dir
    weights = os.stat(os.path.join(run_dir, WEIGHTS_FILE))
    fingerprint = f"{weights.st_size}:{weights.st_mtime_ns}:{len(explorer.test_scores)}"
    path = os.path.join(run_dir, EXPLORER_CACHE_FILE)
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["fingerprint"]) == fingerprint:
                labels = cache["labels"] if cache["labels"].size else None
                return cache["z_mean"], cache["z_log_var"], labels
    except (OSError, KeyError, ValueError):
        pass  # no cache, or an old or damaged one: computed again below
    explorer.data = load_dataset_of_run(explorer.config, run_dir)
    labels = explorer.data.y_test
    z_mean, z_log_var = explorer.measures.encode(
        explorer.model, explorer.data.x_test,
        labels=labels if explorer.model.conditional else None)

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, fingerprint=fingerprint, z_mean=z_mean, z_log_var=z_log_var,
                     labels=np.zeros(0, "int64") if labels is None else labels)

    try:
        write_atomically(path, write)
    except OSError as error:  # a read-only run folder: the page works, it starts slower
        print(f"warning: cannot keep the latents in {path!r} ({error.strerror}); they will be "
              f"computed again at the next start.", file=sys.stderr)
    return z_mean, z_log_var, labels


def _json_body(body):
    import json

    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = None
    require(isinstance(request, dict), "The request body must be a JSON object.")
    return request


def _finite_array(value, what):
    try:
        array = np.asarray(value, dtype="float32")
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be lists of numbers.") from None
    require(np.isfinite(array).all(), f"{what} must be finite numbers.")
    return array


def _image_json(image):
    """An image in [0, 1], (height, width, channels), as the page draws it: 8-bit, base64."""
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype("uint8")
    return {"height": pixels.shape[0], "width": pixels.shape[1], "channels": pixels.shape[2],
            "pixels": base64.b64encode(pixels.tobytes()).decode()}


def _map_json(values):
    """A (height, width) map of non-negative values, scaled to 8 bits by its largest value."""
    peak = float(values.max())
    scaled = np.zeros_like(values) if peak <= 0 else values / peak
    return {"height": values.shape[0], "width": values.shape[1], "max": peak,
            "pixels": base64.b64encode(np.round(scaled * 255).astype("uint8").tobytes()).decode()}


if __name__ == "__main__":
    run_command(main)
