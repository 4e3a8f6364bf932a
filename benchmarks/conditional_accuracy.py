"""Does a conditional run draw the class it is asked for? A small classifier, trained here on the
run's own training split, labels --per_class images generated for every class request; the share
it labels as requested is the conditional accuracy, reported beside the classifier's own test
accuracy (the ceiling of what this measurement can show).

    python benchmarks/conditional_accuracy.py RUN_DIR [--per_class=1000] [--epochs=2]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import layers

import measures
from data import load_dataset_of_run
from plumbing.atomic_files import write_json
from saved_run import load_run


def build_classifier(image_shape, num_classes):
    """Two convolution-and-pooling stages and a softmax: a standard small image classifier."""
    return keras.Sequential([
        keras.Input(image_shape),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ], name="classifier")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--per_class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2, help="classifier training epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config, model = load_run(args.run_dir)
    if not model.conditional:
        sys.exit(f"error: {args.run_dir} is not a conditional run (train it with "
                 f"--conditional=True).")
    data = load_dataset_of_run(config)
    if data.x_train is None:
        sys.exit("error: this measurement needs the training images in memory.")
    names = data.class_names
    keras.utils.set_random_seed(args.seed)
    classifier = build_classifier(data.image_shape, len(names))
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    classifier.fit(data.x_train, data.y_train, batch_size=128, epochs=args.epochs, verbose=2)
    test_accuracy = classifier.evaluate(data.x_test, data.y_test, verbose=0)[1]

    rng = np.random.default_rng(args.seed)
    per_class = {}
    for label, name in enumerate(names):
        z = rng.standard_normal((args.per_class, int(config["latent_dim"]))).astype("float32")
        images = measures.decode(model, z, labels=np.full(args.per_class, label, "int32"))
        predicted = np.argmax(classifier.predict(images, verbose=0, batch_size=500), axis=1)
        per_class[name] = float(np.mean(predicted == label))
    result = {"classifier_test_accuracy": float(test_accuracy),
              "conditional_accuracy": float(np.mean(list(per_class.values()))),
              "per_class": per_class, "images_per_class": args.per_class}
    write_json(os.path.join(args.run_dir, "conditional_accuracy.json"), result)
    print(f"classifier test accuracy {test_accuracy:.4f}; generated images labelled as requested: "
          f"{result['conditional_accuracy']:.4f} ({args.per_class} per class)")
    for name, accuracy in per_class.items():
        print(f"  {name:>12s}  {accuracy:.3f}")


if __name__ == "__main__":
    main()
