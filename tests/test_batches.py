"""batches.in_memory_batches and EpochShuffle: what fit() and evaluate() read from memory, on
every backend, in an order that (seed, epoch) alone fixes."""

import keras
import numpy as np
import pytest

from plumbing.batches import EpochShuffle, in_memory_batches

pytestmark = pytest.mark.backend


def numbered_images(count):
    """Images whose pixels all hold their own index, so a batch says which images it holds."""
    return np.broadcast_to(np.arange(count, dtype="float32")[:, None, None, None],
                           (count, 2, 2, 1)).copy()


def one_epoch(batches, shuffle=None, epoch=0):
    """The batches of one pass, as NumPy, read the way Keras reads each kind of input, after
    setting the epoch as recording.KeyedRandomness does when the epoch begins."""
    if shuffle is not None:
        shuffle.epoch = epoch
    if isinstance(batches, keras.utils.PyDataset):
        epoch = [batches[index] for index in range(len(batches))]
        batches.on_epoch_end()
    else:
        epoch = list(batches)
    return [keras.tree.map_structure(keras.ops.convert_to_numpy, batch) for batch in epoch]


def indices(epoch):
    return np.concatenate([batch[:, 0, 0, 0] for batch in epoch]).astype(int)


def test_every_image_once_per_epoch_in_a_new_order_each_epoch():
    shuffle = EpochShuffle(0)
    batches = in_memory_batches(numbered_images(10), batch_size=4, shuffle=shuffle)
    first, second = one_epoch(batches, shuffle, 0), one_epoch(batches, shuffle, 1)
    assert [len(batch) for batch in first] == [4, 4, 2]  # the last batch is smaller, not dropped
    assert sorted(indices(first)) == list(range(10))
    assert sorted(indices(second)) == list(range(10))
    assert list(indices(first)) != list(indices(second))


def test_seed_and_epoch_alone_fix_the_order_and_no_shuffle_keeps_it():
    def order(seed, epoch, epochs_read_before=()):
        shuffle = EpochShuffle(seed)
        batches = in_memory_batches(numbered_images(50), 8, shuffle)
        for earlier in epochs_read_before:  # what an uninterrupted run read before this epoch
            one_epoch(batches, shuffle, earlier)
        return list(indices(one_epoch(batches, shuffle, epoch)))

    # A resumed run's epoch 2, read first, is the uninterrupted run's epoch 2.
    assert order(3, 2) == order(3, 2, epochs_read_before=(0, 1))
    # The NumPy permutation keyed on (seed, epoch), the same on every backend.
    assert order(3, 2) == list(np.random.default_rng([3, 2]).permutation(50))
    assert order(3, 2) != order(3, 1) and order(3, 2) != order(4, 2)
    in_order = indices(one_epoch(in_memory_batches(numbered_images(50), 8)))
    assert list(in_order) == list(range(50))


def test_a_conditional_batch_keeps_each_label_with_its_image():
    x = numbered_images(12)
    labels = (np.arange(12) * 7 % 5).astype("int32")
    for batch in one_epoch(in_memory_batches({"image": x, "label": labels}, 5, EpochShuffle(1))):
        assert set(batch) == {"image", "label"}
        shown = batch["image"][:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(batch["label"], labels[shown])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data is TensorFlow's")
def test_tf_data_autotuning_is_off():
    # With it on, TensorFlow 2.21 idles at the end of every epoch (see batches.py).
    batches = in_memory_batches(numbered_images(10), 4, EpochShuffle(0))
    assert batches.options().autotune.enabled is False


def test_streamed_batches_are_the_in_memory_batches_of_the_same_seed(tmp_path):
    """Two epochs of a labelled folder, streamed from disk and held in memory, batch by batch,
    labels too: every pipeline (tf.data on TensorFlow, a PyDataset on JAX and PyTorch, the
    streamed PyDataset) takes its order from the same EpochShuffle."""
    from conftest import coloured_squares, write_images
    from data import load_dataset

    write_images(tmp_path / "pics" / "a", coloured_squares(13, size=8, seed=1))
    write_images(tmp_path / "pics" / "b", coloured_squares(11, size=8, seed=2))
    streamed = load_dataset(str(tmp_path / "pics"), stream=True, seed=5)
    in_memory = load_dataset(str(tmp_path / "pics"), stream=False, seed=5)
    disk_shuffle, memory_shuffle = EpochShuffle(5), EpochShuffle(5)
    from_disk = streamed.training_input(4, disk_shuffle, conditional=True)
    from_memory = in_memory.training_input(4, memory_shuffle, conditional=True)
    for epoch in range(2):
        disk = one_epoch(from_disk, disk_shuffle, epoch)
        memory = one_epoch(from_memory, memory_shuffle, epoch)
        assert len(disk) == len(memory) == 6  # 24 images, 2 held out for testing: 22
        for a, b in zip(disk, memory):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
