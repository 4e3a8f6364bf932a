"""Data-parallel training on Keras's own engines: the one place that knows how each backend
spreads a batch over devices.

train.py's `distribute="data_parallel"` replicates the model on every local device (GPUs, TPU
cores, or virtual CPU devices) and splits each global batch of batch_size images evenly across
them: keras.distribution.DataParallel on JAX, tf.distribute.MirroredStrategy on TensorFlow. With
several hosts on JAX, the same command runs on each, and the KERAS_DISTRIBUTION_* variables make
it join its coordinator (README, "Training on several devices"); process 0 alone then writes
the run folder (write_from_process_0), and the processes agree on every decision that reads it
(agreed). TensorFlow's multi-worker strategy is refused (_start_tensorflow says why). Keras 3.15
has no data-parallel engine for PyTorch.

What the engines need from the rest of the project, and why:
- every batch splits evenly: JAX refuses anything else (IndivisibleError), and TensorFlow gives
  a device an empty share when a batch has fewer images than devices, which its CPU
  convolutions reject. batch_size must be a multiple of the device count; the last, partial
  training batch of an epoch is cut to a multiple of it (even_batches), and the per-epoch test
  loss is measured on a multiple of it (train.py). The final evaluation uses every test image,
  through the float32 copy of the model that run_folder.save_trained_model builds outside the
  engine.
- the loss: on TensorFlow each replica computes its own share's mean, and Keras sums the
  replicas' gradients and multiplies the reported loss by their count; CVAE.compute_loss
  divides by replicas_in_sync() so that both are those of the global mean.
- the sampling noise: each TensorFlow replica draws the noise of the whole global batch from
  the same seed state and keeps its own rows (noise_of_this_replica), so the replicas' noise is
  independent and the same as one device's.
- predicting: a TensorFlow model built under a strategy returns every row once per replica from
  predict_on_batch, and JAX splits a prediction batch like a training batch; measures.py calls
  a replicated model directly instead (is_replicated).
"""

import contextlib
import math
import os

from plumbing.errors import RunError, require

# Keras, and the model that loads it, are imported inside the functions: train.py checks its
# distribute setting against DISTRIBUTIONS before Keras may load.

DISTRIBUTIONS = (None, "data_parallel")
# The variables with which JAX joins a multi-host job; keras.distribution.initialize reads them.
JAX_CLUSTER_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                         "KERAS_DISTRIBUTION_PROCESS_ID")


def start(distribute, virtual_devices=None):
    """(device count, a function that returns the scope in which to build, compile and train
    the model; a fresh one for each `with`, as JAX's can be entered only once). Call it once,
    after Keras is imported and before anything runs on a device: the device count is fixed
    when the backend starts.

    virtual_devices: split the host's CPU into that many devices, so that data-parallel code
    can be tried and tested on a machine without accelerators.
    """
    import keras

    if distribute is None:
        require(virtual_devices is None, "virtual_devices is for distribute=data_parallel; "
                                         "without it the run uses one device.")
        return 1, contextlib.nullcontext
    backend = keras.backend.backend()
    require(backend in ("tensorflow", "jax"),
            f"distribute=data_parallel is not supported on the {backend} backend: Keras "
            f"{keras.__version__} has data-parallel training for JAX (keras.distribution) and "
            f"TensorFlow (tf.distribute) only. Run with KERAS_BACKEND=jax or tensorflow, or "
            f"without --distribute.")
    if backend == "jax":
        return _start_jax(virtual_devices)
    return _start_tensorflow(virtual_devices)


def _start_jax(virtual_devices):
    import keras

    if virtual_devices is not None:
        # Read when JAX starts its CPU backend, which Keras's import has not done yet.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={virtual_devices}")
    several_hosts = any(name in os.environ for name in JAX_CLUSTER_VARIABLES)
    if several_hosts:
        keras.distribution.initialize()  # joins the other hosts; then list_devices() sees all
    # Without a device type, the accelerators if there are any, else the CPU's devices.
    devices = keras.distribution.list_devices("cpu" if virtual_devices else None)
    # Keras shards only tf.data input across processes by itself; even_batches does it here.
    engine = keras.distribution.DataParallel(devices=devices,
                                             auto_shard_dataset=not several_hosts)
    return len(devices), engine.scope


def _start_tensorflow(virtual_devices):
    import tensorflow as tf

    if virtual_devices is not None:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * virtual_devices)
    import keras

    # Refused rather than attempted: two workers on one machine, each running this command with
    # its TF_CONFIG, both failed in their first step inside Keras 3.15.1's fit(), which takes
    # the mean of the scalar per-step logs over an axis 0 they do not have (reduce_per_replica).
    require("TF_CONFIG" not in os.environ,
            f"TF_CONFIG is set, which asks TensorFlow for training across hosts "
            f"(MultiWorkerMirroredStrategy), and fit() of Keras {keras.__version__} fails under "
            f"it before its first step. Across hosts, use the JAX backend (README, \"Training "
            f"on several devices\"); on one host, unset TF_CONFIG.")
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if virtual_devices is None and gpus else tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    return strategy.num_replicas_in_sync, strategy.scope


def images_per_epoch(num_images, batch_size, devices):
    """How many images an epoch trains on once the last batch is cut to a multiple of devices:
    at most devices - 1 fewer, different ones every epoch, because the order is reshuffled."""
    return num_images - (num_images % batch_size) % devices


def even_batches(batches, devices, num_images, batch_size):
    """The batches of an epoch of num_images images (a tf.data.Dataset or a
    keras.utils.PyDataset, in batches of batch_size, a multiple of devices) with the last one
    cut to a multiple of devices images, and dropped if that leaves it empty. In a JAX job of
    several processes, each process keeps its own contiguous share of every batch: they all
    make the same batches from the same seed, and Keras takes each one's share as its part of
    the global batch."""
    processes = _jax_processes()
    if devices == 1 or (num_images % batch_size % devices == 0 and processes == (0, 1)):
        return batches
    import keras

    length = math.ceil(images_per_epoch(num_images, batch_size, devices) / batch_size)
    if isinstance(batches, keras.utils.PyDataset):
        return _even_py_dataset(batches, devices, length, processes)
    import tensorflow as tf

    def cut(batch):
        keep = tf.shape(tf.nest.flatten(batch)[0])[0] // devices * devices
        return tf.nest.map_structure(lambda array: array[:keep], batch)

    # The length is stated again, because a filter makes it unknown to fit()'s progress bar.
    return batches.map(cut).filter(lambda batch: tf.shape(tf.nest.flatten(batch)[0])[0] > 0
                                   ).apply(tf.data.experimental.assert_cardinality(length))


def write_from_process_0():
    """In a JAX job of several processes, make every process but process 0 write nothing
    (atomic_files.stop_writing), and say so; elsewhere, nothing changes. Returns whether this
    process writes the run folder."""
    from plumbing.atomic_files import stop_writing

    index, count = _jax_processes()
    if index > 0:
        stop_writing()
        print(f"Process {index} of {count}: process 0 writes the run folder; this process "
              f"trains in step with it and writes nothing there.", flush=True)
    return index == 0


def agreed(decide, what, code=int):
    """decide()'s outcome, once every process of a JAX job has reached the same one; a process
    alone (every other run) just calls decide().

    Each process takes the decisions that depend on the run folder (refuse, resume, or start
    afresh) by reading it. A process that took another way than the others would wait forever
    in the first collective they never reach, so the processes compare code(outcome), a small
    integer (-1 for an error), before any of them goes on: when they are all the same, each
    returns its outcome or raises its own error; otherwise every one of them raises, saying so.
    """
    index, count = _jax_processes()
    try:
        outcome, error = decide(), None
        mine = code(outcome)
    except Exception as caught:  # raised below, once the others know
        outcome, error, mine = None, caught, -1
    if count > 1:
        codes = _from_every_process(mine)
        if error is None and len(set(codes)) > 1:
            raise RunError(
                f"The {count} processes of this JAX job reached different outcomes at {what} "
                f"(process by process: {codes}, where -1 is an error); they stop here rather "
                f"than wait for each other forever. This is process {index}. Either one of "
                f"them failed, and its own log says why, or they do not see the same run "
                f"folder: with several hosts, out_dir must be one folder that all of them share.")
    if error is not None:
        raise error
    return outcome


def any_process(flag):
    """Whether flag is true in any process of a JAX job (all of them must ask together); flag
    itself in a process alone."""
    _, count = _jax_processes()
    return flag if count == 1 else any(_from_every_process(int(flag)))


def _from_every_process(value):
    """A small integer from every process of a JAX job, in process order (all must call)."""
    import numpy as np
    from jax.experimental import multihost_utils

    return [int(each) for each in multihost_utils.process_allgather(np.int32(value))]


def _jax_processes():
    """(this process's index, the number of processes) of a JAX job; (0, 1) elsewhere."""
    import keras

    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def _even_py_dataset(inner, devices, length, processes):
    import keras

    index, count = processes

    class EvenBatches(keras.utils.PyDataset):
        """inner's first length batches, each cut to a multiple of devices images, and of
        those this process's share."""

        def __init__(self):
            super().__init__(workers=inner.workers, use_multiprocessing=inner.use_multiprocessing,
                             max_queue_size=inner.max_queue_size)

        def __len__(self):
            return length

        def __getitem__(self, index_of_batch):
            batch = inner[index_of_batch]
            size = len(batch["image"] if isinstance(batch, dict) else batch)
            share = size // devices * devices // count  # a multiple of the local devices
            rows = slice(index * share, (index + 1) * share)
            if isinstance(batch, dict):
                return {name: array[rows] for name, array in batch.items()}
            return batch[rows]

        def on_epoch_end(self):
            inner.on_epoch_end()

    return EvenBatches()


# ---- inside the model: what a replica of a data-parallel step must do differently -------------
def replicas_in_sync():
    """How many TensorFlow replicas each compute one share of the batch right now (1 outside a
    tf.distribute strategy, and always 1 on JAX, whose training step sees the whole batch)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf  # only on the TensorFlow backend, which has it

    return tf.distribute.get_strategy().num_replicas_in_sync


def noise_of_this_replica(draw, like, seed):
    """draw(shape, dtype=, seed=) noise shaped and typed like the tensor `like`, as one device
    would draw it for the whole batch.

    Under tf.distribute each replica holds a share of the batch but the same seed state: drawing
    the noise of the whole global batch and keeping this replica's rows gives every image the
    noise it would have on one device, instead of the same noise on every replica. This assumes
    the even split that even_batches guarantees.
    """
    from keras import ops

    shape = tuple(ops.shape(like))
    offset, batch = 0, shape[0]
    if replicas_in_sync() > 1:
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        # None: the whole batch, as when Keras builds the model on a sample of it.
        if context is not None:
            offset = context.replica_id_in_sync_group * shape[0]
            batch = replicas_in_sync() * shape[0]
    noise = draw((batch, *shape[1:]), dtype=like.dtype, seed=seed)
    return ops.slice(noise, (offset,) + (0,) * (len(shape) - 1), shape)


def is_replicated(model):
    """True when the model's predictions would go through a data-parallel engine (see
    measures._predict for why that matters)."""
    import keras

    if keras.backend.backend() == "jax":
        return keras.distribution.distribution() is not None
    if keras.backend.backend() == "tensorflow":
        return model.distribute_strategy.num_replicas_in_sync > 1
    return False
