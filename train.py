"""Train the article's convolutional VAE on MNIST, or on any images, and save what it learned.

    python train.py                                   # the article's experiment, MNIST via Keras
    python train.py --data_path=../shared/data/mnist.npz --epochs=1 --train_subset=2000
    python train.py --dataset=path/to/folder_of_images --architecture=strided

Any hyperparameter below can be overridden as --name=value (python train.py --help lists them).
Everything the run writes goes into out_dir: config.json, the weights, history.csv,
metrics.json and the figures. Running it again resumes an interrupted run.
"""

import sys

# ----------------------------------------------------------------------------------------------
# data
dataset: str = "mnist"  # mnist | fashion_mnist | cifar10 (Keras), or the path of an .npz or image folder
data_path: str = None  # a named dataset's local copy (mnist.npz, ...); None = download via Keras
image_size: int = None  # resize every image to image_size x image_size; None = the data's own size
channels: int = None  # 1 (grey) or 3 (RGB); None = 1 if every image is grey, else 3
test_fraction: float = 0.1  # share of the images held out for testing when the data has no test split
stream: bool = None  # read a folder's images from disk every epoch; None = if they do not fit in memory
train_subset: int = None  # train on the first N training images only; None = all
validation_images: int = None  # hold out N training images (chosen by seed) to choose settings on
holdout_class: str = None  # a class name or index left out of training, to measure anomaly detection
binarize: str = None  # None: grey pixels | static: 0/1 at 0.5 | dynamic: 0/1 drawn anew each time seen
# model
architecture: str = "article"  # article: its stride-1 convolutions | strided: halving, for large images
latent_dim: int = None  # size of z; None: the article's 2 (a plottable latent space), 16 for an inspection set
patch_size: int = None  # N: a model of NxN patches, an image scored patch by patch (textures; docs/anomaly-detection.md)
conditional: bool = False  # True: encoder and decoder also see the class (labelled data only)
likelihood: str = "auto"  # auto: bernoulli for MNIST-like images, else discretized_logistic | bernoulli | gaussian | discretized_logistic
precision: str = "auto"  # auto: bf16 on a CPU that has it, fp16 on a GPU, else float32 | float32 | mixed_bfloat16 | mixed_float16
# optimizer
optimizer: str = "rmsprop"  # rmsprop (the article's) | adam | sgd
learning_rate: float = 1e-3  # peak learning rate, reached after the warm-up
warmup_steps: int = 500  # linear warm-up from 0; keeps RMSprop from diverging (see docs/warm-up.md)
lr_schedule: str = "wsd"  # wsd: the peak held, then decayed | cosine: decayed from the peak | constant
cooldown_share: float = 0.4  # wsd: the share of the steps spent decaying, at the end (docs/results.md)
ema_momentum: float = None  # e.g. 0.999: evaluate and save a moving average of the weights; None = off
weight_decay: float = 0.5  # decoupled, of the two wide Dense kernels only (docs/results.md: chosen on
#                            validation images); 0 = the article's plain RMSprop
kl_warmup_steps: int = 0  # N: the KL term's gradient weighted 0 to 1 over the first N steps; 0 = off
epochs: int = 10  # passes over the training images
batch_size: int = 64  # images per step
seed: int = 0  # seeds weights, shuffling, the test split, sampling and the images in the figures
# devices
distribute: str = None  # None: one device | data_parallel: split each batch over every local device
virtual_devices: int = None  # split the CPU into N devices, to try data_parallel without accelerators
# output
out_dir: str = "outputs"  # everything the run writes goes here
tensorboard: bool = False  # True: log the loss terms, learning rate and snapshots in out_dir/tensorboard
overwrite: bool = False  # True: discard whatever run out_dir holds and train from scratch
# ----------------------------------------------------------------------------------------------
HYPERPARAMETERS = {name: globals()[name] for name in __annotations__}


def main(argv):
    from plumbing.command_line import quiet_tensorflow
    from plumbing.train_config import read_config

    # Refused at once, before TensorFlow takes its seconds to load: a typo or a bad value.
    config = read_config(HYPERPARAMETERS, __annotations__, argv, source=__file__)
    quiet_tensorflow()
    import keras

    import evaluate
    import plotting
    from cvae import build_cvae, wide_dense_kernels
    from data import as_trained, fitting_likelihood, load_dataset_of_run
    from plumbing import recording
    from plumbing.batches import EpochShuffle
    from plumbing.optimizer import make_optimizer
    from plumbing.run_folder import GIF_FILE, SNAPSHOT_FOLDER
    from plumbing.training_run import TrainingRun
    from saved_run import save_trained_model

    # The devices, and out_dir: a new run, an unfinished one to resume, or one already finished.
    run = TrainingRun(config, save_model=save_trained_model)
    if run.already_finished:
        return 0

    # data
    def load_data():
        data = as_trained(load_dataset_of_run(config), config)
        run.describe_and_check(data)  # against the model, the devices and a resumed run's data
        return data

    data = run.agreed(load_data, "the checks of the data and of out_dir's run")

    # model and optimizer; the decoder's likelihood fits the pixels (likelihoods.py)
    likelihood = config["likelihood"]
    if likelihood == "auto":
        likelihood, why = fitting_likelihood(data, config)
        print(f"Likelihood: {likelihood}, as {why}.")
    run.set_precision()  # float32, or with "auto" bf16 where the CPU multiplies in it natively
    keras.utils.set_random_seed(config["seed"])
    steps = run.steps(data)  # the run's length, and its warm-ups fitted to it
    with run.distributed():  # a replicated model is built and compiled inside its engine
        model = build_cvae(config["latent_dim"], data.image_shape, config["architecture"],
                           seed=config["seed"],
                           num_classes=len(data.class_names) if config["conditional"] else None,
                           likelihood=likelihood, binarize=config["binarize"],
                           kl_warmup_steps=config["kl_warmup_steps"])
        model.kl_warmup_steps = steps["kl_warmup"]
        float32_layers, bias_method = run.split_precision(model)  # a few stay float32 in bf16
        run.describe_model(model)  # its layers, parameters and cost
        # The XLA-compiled update cannot run inside tf.distribute's replicas (it would have to
        # sum their gradients inside a nested compiled function, which TensorFlow refuses).
        model.compile(optimizer=make_optimizer(
            config["optimizer"], config["learning_rate"], total_steps=steps["total"],
            warmup_steps=steps["warmup"], schedule=config["lr_schedule"],
            cooldown_share=config["cooldown_share"], fused=config["distribute"] is None,
            ema_momentum=config["ema_momentum"], weight_decay=config["weight_decay"],
            decayed=wide_dense_kernels(model), variables=model.trainable_variables))
    run.write_config(precision_used=model.dtype_policy.name, float32_layers=float32_layers,
                     bias_method=bias_method, likelihood_used=likelihood)

    # train; val_* columns measure the validation split, or else only watch the test split
    # (A short run gets a short evaluation: evaluate.scaled_to_run says what it leaves out.)
    evaluation_settings, monitored, note = evaluate.scaled_to_run(
        data.num_train, config["epochs"], len(data.x_test), data.monitored_split())
    if note:
        print(note.replace("OUT_DIR", run.out_dir))
    shuffle = EpochShuffle(config["seed"])
    training_input, monitored_input = run.fit_inputs(data, shuffle, monitored)
    shown_x, _, shown_labels = data.shown_images(config["seed"])
    snapshots = plotting.EpochSnapshots(
        shown_x, shown_labels, config["latent_dim"], run.path(SNAPSHOT_FOLDER),
        run.path(GIF_FILE), seed=config["seed"])
    with run.stopping_cleanly(model, snapshots.draw_reconstructions):  # Ctrl-C, SIGTERM, NaN
        with run.distributed():
            # shuffle=False: the batches come in the order (seed, epoch) fixes (EpochShuffle).
            model.fit(training_input, epochs=config["epochs"], shuffle=False,
                      validation_data=monitored_input,
                      callbacks=recording.training_callbacks(run.out_dir, config, snapshots,
                                                             shuffle),
                      verbose="auto" if sys.stdout.isatty() else 2)
    if run.exit_code is not None:
        return run.exit_code

    # save the float32 copy of the model, then evaluate it on every test image
    with run.evaluating():
        saved = run.save(model)
        evaluate.evaluate_run(saved, config, data, run.out_dir, evaluation_settings)
    return run.exit_code


if __name__ == "__main__":
    from plumbing.command_line import run_command

    run_command(main)
