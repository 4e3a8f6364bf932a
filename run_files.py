"""What a run folder holds, and how it is written and read back.

Every file is written to a temporary name in the same folder and then renamed over the target
(os.replace is atomic on POSIX and Windows), so a crash never leaves a half-written file for a
later run or evaluate.py to read.
"""

import json
import os
import tempfile

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "cvae.weights.h5"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
RECONSTRUCTIONS_FILE = "reconstructions.png"
SNAPSHOT_FOLDER = "snapshots"
BACKUP_FOLDER = "backup"  # Keras BackupAndRestore's state, present only while a run is unfinished


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
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes owner-only files
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
        if name.startswith(".") and ".tmp" in name:
            os.remove(os.path.join(folder, name))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    return write_atomically(path, write)


def read_json(path):
    with open(path) as f:
        return json.load(f)
