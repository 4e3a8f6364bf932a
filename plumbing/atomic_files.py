"""Files written so that a crash never leaves half of one: each is written under a temporary name
in the same folder, then renamed over the target (os.replace is atomic on POSIX and Windows), so
a later run, evaluate.py or a reader never sees a half-written file.
"""

import json
import os
import re
import tempfile

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


def write_json(path, data):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    return write_atomically(path, write)


def read_json(path):
    with open(path) as f:
        return json.load(f)
