"""batches.in_memory_batches: what fit() and evaluate() read from memory, on every backend."""

import keras
import numpy as np
import pytest

from plumbing.batches import in_memory_batches

pytestmark = pytest.mark.backend


def numbered_images(count):
    """Images whose pixels all hold their own index, so a batch says which images it holds."""
    return np.broadcast_to(np.arange(count, dtype="float32")[:, None, None, None],
                           (count, 2, 2, 1)).copy()


def one_epoch(batches):
    """The batches of one pass, as NumPy, read the way Keras reads each kind of input."""
    if isinstance(batches, keras.utils.PyDataset):
        epoch = [batches[index] for index in range(len(batches))]
        batches.on_epoch_end()
    else:
        epoch = list(batches)
    return [keras.tree.map_structure(keras.ops.convert_to_numpy, batch) for batch in epoch]


def indices(epoch):
    return np.concatenate([batch[:, 0, 0, 0] for batch in epoch]).astype(int)


def test_every_image_once_per_epoch_in_a_new_order_each_epoch():
    batches = in_memory_batches(numbered_images(10), batch_size=4, shuffle_seed=0)
    first, second = one_epoch(batches), one_epoch(batches)
    assert [len(batch) for batch in first] == [4, 4, 2]  # the last batch is smaller, not dropped
    assert sorted(indices(first)) == list(range(10))
    assert sorted(indices(second)) == list(range(10))
    assert list(indices(first)) != list(indices(second))


def test_the_seed_fixes_the_order_and_no_seed_keeps_it():
    orders = [indices(one_epoch(in_memory_batches(numbered_images(50), 8, shuffle_seed=seed)))
              for seed in (3, 3, 4)]
    assert list(orders[0]) == list(orders[1])
    assert list(orders[0]) != list(orders[2])
    in_order = indices(one_epoch(in_memory_batches(numbered_images(50), 8)))
    assert list(in_order) == list(range(50))


def test_a_conditional_batch_keeps_each_label_with_its_image():
    x = numbered_images(12)
    labels = (np.arange(12) * 7 % 5).astype("int32")
    for batch in one_epoch(in_memory_batches({"image": x, "label": labels}, 5, shuffle_seed=1)):
        assert set(batch) == {"image", "label"}
        shown = batch["image"][:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(batch["label"], labels[shown])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data is TensorFlow's")
def test_tf_data_autotuning_is_off():
    # With it on, TensorFlow 2.21 idles at the end of every epoch (see batches.py).
    batches = in_memory_batches(numbered_images(10), 4, shuffle_seed=0)
    assert batches.options().autotune.enabled is False


def test_streamed_batches_are_the_in_memory_batches_of_the_same_seed(tmp_path):
    """Two epochs of a labelled folder, streamed from disk and held in memory, batch by batch,
    labels too. In memory this is the PyDataset that JAX and PyTorch train on; on TensorFlow
    fit() reads memory through tf.data, whose shuffle is its own."""
    from conftest import coloured_squares, write_images
    from data import load_dataset
    from plumbing.batches import _array_batches

    write_images(tmp_path / "pics" / "a", coloured_squares(13, size=8, seed=1))
    write_images(tmp_path / "pics" / "b", coloured_squares(11, size=8, seed=2))
    streamed = load_dataset(str(tmp_path / "pics"), stream=True, seed=5)
    in_memory = load_dataset(str(tmp_path / "pics"), stream=False, seed=5)
    from_disk = streamed.training_input(batch_size=4, seed=5, conditional=True)
    from_memory = _array_batches(in_memory.model_input(in_memory.x_train, in_memory.y_train,
                                                       True), 4, shuffle_seed=5)
    for _ in range(2):
        disk, memory = one_epoch(from_disk), one_epoch(from_memory)
        assert len(disk) == len(memory) == 6  # 24 images, 2 held out for testing: 22
        for a, b in zip(disk, memory):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
