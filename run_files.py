"""What a run folder holds, and how it is written and read back.

Every file is written to a temporary name in the same folder and then renamed over the target
(os.replace is atomic on POSIX and Windows), so a crash never leaves a half-written file for a
later run or evaluate.py to read.
"""

import csv
import json
import os
import re
import tempfile

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "cvae.weights.h5"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
RECONSTRUCTIONS_FILE = "reconstructions.png"
SNAPSHOT_FOLDER = "snapshots"
BACKUP_FOLDER = "backup"  # Keras BackupAndRestore's state, present only while a run is unfinished
GIF_FILE = "training.gif"
SCORES_FILE = "test_scores.npy"
FIGURE_FILES = ("latent_space.png", "manifold.png", "samples.png", "interpolation.png",
                "learning_curves.png", "anomalies.png", "score_histogram.png", "roc.png")
# Everything a run writes, so that --overwrite=True can clear an old run and nothing else.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, METRICS_FILE, RECONSTRUCTIONS_FILE,
             GIF_FILE, SCORES_FILE) + FIGURE_FILES
RUN_FOLDERS = (SNAPSHOT_FOLDER, BACKUP_FOLDER)
# The names atomic_path() makes: ".<name>.<8 random characters from mkstemp>.tmp<extension>".
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
# Read once: os.umask can only be read by setting it, which must not race other threads.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_path(final_path):
    """A fresh temporary path beside final_path, keeping its extension (Keras checks it)."""
    folder, name = os.path.split(os.path.abspath(final_path))
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp" + _extension(name),
                                         dir=folder)
    os.close(handle)
    return temporary


def _extension(name):
    return ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1]


def write_atomically(final_path, write):
    """Call write(temporary_path), then rename the result onto final_path."""
    temporary = atomic_path(final_path)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes owner-only files
        os.replace(temporary, final_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return final_path


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a crash cut short (never read by anything)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if _TEMPORARY_NAME.match(name):
            os.remove(os.path.join(folder, name))


def remove_run(folder):
    """Delete every file and folder a run writes in `folder`, and nothing else."""
    import shutil

    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


def lock_run_folder(folder):
    """Hold an exclusive lock on folder/.lock for the life of the process; False if another
    process holds it. Two runs writing into one folder would corrupt each other's backups."""
    import fcntl

    handle = open(os.path.join(folder, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _held_locks.append(handle)  # closing the file would release the lock
    return True


_held_locks = []


def write_json(path, data):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    return write_atomically(path, write)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_history(path):
    """The rows of a history.csv as dicts of floats (epoch as int); [] if there is none."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed = {key: float(value) for key, value in row.items() if value not in ("", None)}
            parsed["epoch"] = int(parsed["epoch"])
            rows.append(parsed)
    return rows


def training_complete(folder, epochs):
    """True when all `epochs` epochs are in the history and no backup is left to resume."""
    return (not os.path.isdir(os.path.join(folder, BACKUP_FOLDER))
            and len(read_history(os.path.join(folder, HISTORY_FILE))) >= epochs)
