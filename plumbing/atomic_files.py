"""Files written so that a crash never leaves half of one: each is written under a temporary name
in the same folder, then renamed over the target (os.replace is atomic on POSIX and Windows), so
a later run, evaluate.py or a reader never sees a half-written file.

One writer per job: in a JAX job of several processes, every process but process 0 turns
writing off here (devices.write_from_process_0), and then writes nothing into the run folder and
deletes nothing there. Two hosts on one shared file system never overwrite each other's files
nor delete each other's temporaries and backups. Such a process still makes every write call
that process 0 makes, into a private folder that is deleted at once: a write may touch the
devices, and the processes must stay in lockstep. Keras's saving creates variables, and in a
multi-process JAX job creating a variable is a collective (jax.device_put checks that every
process puts the same value); process 0 saving a backup alone waited there forever. Keras's own
writers (TensorBoard's logs) are pointed at that folder instead (recording.training_callbacks).
"""

import atexit
import json
import os
import re
import shutil
import tempfile

# The names atomic_path() makes: ".<name>.<8 random characters from mkstemp>.tmp<extension>".
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
# Read once: os.umask can only be read by setting it, which must not race other threads.
_UMASK = os.umask(0)
os.umask(_UMASK)
_writing = True
_private_folder = None


def stop_writing():
    """From now on this process writes nothing into the run folder: another process of its job
    writes the files. Its writes go to a private folder, deleted file by file and at exit."""
    global _writing, _private_folder
    _writing = False
    _private_folder = tempfile.mkdtemp(prefix="not-written-")
    atexit.register(shutil.rmtree, _private_folder, ignore_errors=True)


def writing():
    """False once stop_writing() was called: the caller must then neither write nor delete in
    the run folder, and sends what it must still write to private_folder()."""
    return _writing


def private_folder():
    """Where a process that does not write sends its writes (None in a process that writes)."""
    return _private_folder


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
    """Call write(temporary_path), then rename the result onto final_path. In a process that
    does not write (stop_writing), the temporary is in its private folder, and is deleted."""
    temporary = atomic_path(final_path if _writing else
                            os.path.join(_private_folder, os.path.basename(final_path)))
    try:
        write(temporary)
        if _writing:
            os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes owner-only files
            os.replace(temporary, final_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return final_path


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a crash cut short (never read by anything)."""
    if not _writing or not os.path.isdir(folder):  # another process's may still be in use
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
