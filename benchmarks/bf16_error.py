"""Where bf16 puts its rounding error into the article's CVAE, layer group by layer group.

    python benchmarks/bf16_error.py --run=runs/fp32 --data_path=../shared/data/mnist.npz

For a trained float32 run, the same weights are run in float32 and then with one group of layers
at a time computing in bfloat16 (as Keras's mixed_bfloat16 does: float32 weights, cast to bf16
on use), every other layer in float32, on the same images and the same noise draws. Two things
are measured against float32, on --images training images (the split the optimizer sees; this
measures arithmetic, not generalization, and never touches the test split):

- the forward error: each image's negative ELBO under the plan minus under float32, in nats (the
  mean is the bias the rounding adds to the objective, the spread how much it moves one image);
- the gradient error: the relative distance of a --batch_size batch's gradient under the plan from
  the float32 gradient of the same batch, beside the relative distance of float32 gradients of
  two different batches from their mean (the minibatch noise that SGD already lives with). A
  rounding error far below that noise cannot be what costs a run its nats.

The plans: every group bf16 (Keras's mixed_bfloat16; the heads and the output layer stay float32
in every plan, see cvae.py), then each group alone in bf16: the encoder's convolutions, the
decoder's transposed convolutions, the two wide Dense layers, and the decoder's first Dense layer,
which reads z; last, every group in bf16 with each of the two bias methods of
plumbing/precision.BIAS_METHODS: the biases added in float32, then added in bf16 with only their
gradients summed in float32 (train.py also keeps the layer that reads z in float32). With
--per_weight, the gradient error of every weight under the plans that put every group in bf16.
TensorFlow backend.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Which layers compute in bf16 in each plan (the rest in float32), by layer name prefix.
GROUPS = {
    "encoder convolutions": ("encoder", ("conv_",)),
    "decoder transposed convolutions": ("decoder", ("deconv_",)),
    "wide Dense layers": ("both", ("dense_hidden@encoder", "dense_unflatten@decoder")),
    "decoder Dense reading z": ("decoder", ("dense_hidden",)),
}
PLANS = {"float32": (), "mixed_bfloat16 (every group)": tuple(GROUPS),
         **{f"{group} only": (group,) for group in GROUPS},
         "every group, biases float32": tuple(GROUPS),
         "every group, bias gradients float32": tuple(GROUPS)}
# The two bias methods of plumbing/precision.BIAS_METHODS, each alone.
BIAS_PLANS = {"every group, biases float32": "float32",
              "every group, bias gradients float32": "bf16_summed_in_float32"}


def layers_of(model, group):
    """The Keras layers of a GROUPS entry."""
    where, prefixes = GROUPS[group]
    found = []
    for part_name in ("encoder", "decoder"):
        part = getattr(model, part_name)
        for layer in part.layers:
            for prefix in prefixes:
                name, _, only_in = prefix.partition("@")
                if layer.name.startswith(name) and (only_in or where) in (part_name, "both"):
                    found.append(layer)
    return found


def set_plan(model, plan):
    """Every layer float32, then the plan's groups bf16 (compute only; weights stay float32)."""
    import keras

    from plumbing.precision import BIAS_METHODS

    for part in (model.encoder, model.decoder):
        for layer in part.layers:
            if layer.weights:
                layer.dtype_policy = keras.DTypePolicy("float32")
                if getattr(layer, "bias", None) is not None:
                    layer.bias._autocast = True  # Keras's default: cast with the layer
                    vars(layer).pop("call", None)  # a bias method's call, from an earlier plan
    for group in PLANS[plan]:
        for layer in layers_of(model, group):
            layer.dtype_policy = keras.DTypePolicy("mixed_bfloat16")
    if plan in BIAS_PLANS:
        BIAS_METHODS[BIAS_PLANS[plan]](model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished float32 run of train.py")
    parser.add_argument("--data_path", default=None, help="MNIST's mnist.npz (None: via Keras)")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_weight", action="store_true",
                        help="also print each weight's gradient error under every-group plans")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from keras import ops

    from cvae import negative_elbo_terms
    from data import load_dataset
    from saved_run import load_run

    config, model = load_run(args.run)
    data = load_dataset("mnist", data_path=args.data_path)
    x = data.x_train[np.random.default_rng(args.seed).permutation(len(data.x_train))[
        :args.images]]
    epsilon = np.random.default_rng(args.seed + 1).standard_normal(
        (len(x), int(config["latent_dim"]))).astype("float32")
    variables = model.trainable_variables
    # Where each weight's gradient sits in the concatenated gradient.
    ends = np.cumsum([int(np.prod(v.shape)) for v in variables])
    weight_names = [f"{part.name}/{v.path}" for part in (model.encoder, model.decoder)
                    for v in part.trainable_variables]

    def elbo_and_gradient(images, noise):
        with tf.GradientTape() as tape:
            z_mean, z_log_var = model.encoder(images)
            z = z_mean + ops.exp(0.5 * z_log_var) * noise
            reconstruction, kl = negative_elbo_terms(images, model.decoder(z), z_mean, z_log_var)
            loss = ops.mean(reconstruction + kl)
        gradient = tape.gradient(loss, variables)
        return reconstruction + kl, tf.concat([tf.reshape(g, [-1]) for g in gradient], 0)

    batches = [slice(start, start + args.batch_size)
               for start in range(0, len(x) - args.batch_size + 1, args.batch_size)]
    results = {}
    reference = None
    for plan in PLANS:
        set_plan(model, plan)
        step = tf.function(elbo_and_gradient, reduce_retracing=True)
        elbos, gradients = zip(*((tensor.numpy() for tensor in step(x[b], epsilon[b]))
                                 for b in batches))
        elbos, gradients = np.concatenate(elbos), np.stack(gradients)
        if reference is None:
            reference = elbos, gradients
            mean_gradient = gradients.mean(axis=0)
            noise = np.linalg.norm(gradients - mean_gradient, axis=1) / np.linalg.norm(
                mean_gradient)
            results[plan] = {"negative_elbo": float(elbos.mean()),
                             "minibatch_gradient_noise": float(np.median(noise))}
            continue
        difference = elbos - reference[0]
        error = np.linalg.norm(gradients - reference[1], axis=1) / np.linalg.norm(
            reference[1], axis=1)
        per_weight = {
            name: float(np.median(
                np.linalg.norm(gradients[:, start:end] - reference[1][:, start:end], axis=1)
                / np.linalg.norm(reference[1][:, start:end], axis=1)))
            for name, start, end in zip(weight_names, np.r_[0, ends[:-1]], ends)}
        results[plan] = {
            "per_weight_gradient_error": per_weight,
            "negative_elbo": float(elbos.mean()),
            "elbo_bias": float(difference.mean()),
            "elbo_bias_se": float(difference.std(ddof=1) / np.sqrt(len(difference))),
            "elbo_rms_change": float(np.sqrt(np.mean(difference ** 2))),
            "gradient_relative_error": float(np.median(error)),
        }
    noise = results["float32"]["minibatch_gradient_noise"]
    print(f"{len(x)} training images of MNIST, run {args.run}; float32 negative ELBO "
          f"{results['float32']['negative_elbo']:.3f} nats; minibatch gradient noise (median "
          f"relative distance of a {args.batch_size}-image batch's gradient from the mean): "
          f"{noise:.3f}")
    print(f"{'bf16 in':>36} {'-ELBO bias (nats)':>20} {'RMS change':>11} "
          f"{'gradient error':>15} {'error / noise':>14}")
    for plan, result in results.items():
        if plan == "float32":
            continue
        print(f"{plan:>36} {result['elbo_bias']:>+11.3f} ± {result['elbo_bias_se']:.3f} "
              f"{result['elbo_rms_change']:>11.3f} {result['gradient_relative_error']:>15.4f} "
              f"{result['gradient_relative_error'] / noise:>14.4f}")
    if args.per_weight:
        every_group = [plan for plan in PLANS if PLANS[plan] == tuple(GROUPS)]
        print(f"\nGradient error of each weight (median over batches): {' | '.join(every_group)}")
        for name in weight_names:
            print(f"{name:>45} " + " ".join(
                f"{results[plan]['per_weight_gradient_error'][name]:>10.4f}"
                for plan in every_group))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
