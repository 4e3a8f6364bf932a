"""The model's sizes from the image shape alone: how many halvings, which filters, how many
parameters and FLOPs, and whether a model can be built at all. Nothing here builds a model, so
asking about an image size that would need gigabytes costs nothing.

cvae.py builds its layers from encoder_filters and feature_map_shape; train.py refuses a model
through architecture_problem before anything loads, and reports training_gflops_per_image.
"""

import math

ARCHITECTURES = ("article", "strided")
KERNEL_SIZE = 3
HIDDEN_UNITS = 128
ARTICLE_FILTERS = (32, 64, 64)
# One entry per halving; the strided encoder uses the first k for k halvings.
STRIDED_FILTERS = (32, 64, 64, 128, 128)
# The smallest side a feature map may have: a 3x3 kernel on anything smaller sees mostly padding.
MIN_SIDE = 4
# Refused beyond this, for either architecture: the article's two Dense layers hold
# 2 * 128 * 64 weights per pixel, so a 512x512 article model would need 17 GB for its float32
# weights alone, and a strided one whose sides halve only once or twice is nearly as large.
MAX_PARAMETERS = 100_000_000


def strided_halvings(image_shape):
    """How many stride-2 stages the strided model has: halve while both sides are even and the
    halved sides stay >= MIN_SIDE, at most once per entry of STRIDED_FILTERS (28 -> 2, 32 -> 3,
    64 -> 4, 128 -> 5)."""
    height, width = image_shape[:2]
    count = 0
    while (count < len(STRIDED_FILTERS) and height % 2 == 0 and width % 2 == 0
           and min(height, width) // 2 >= MIN_SIDE):
        height, width, count = height // 2, width // 2, count + 1
    return count


def encoder_filters(image_shape, architecture):
    """Filters of the encoder's convolutions, first to last; the decoder mirrors them."""
    if architecture == "article":
        return ARTICLE_FILTERS
    return STRIDED_FILTERS[: strided_halvings(image_shape)]


def feature_map_shape(image_shape, architecture):
    """(height, width, channels) of the encoder's last convolution, which the decoder's
    dense_unflatten layer rebuilds."""
    height, width = image_shape[:2]
    scale = 2 ** strided_halvings(image_shape) if architecture == "strided" else 1
    return (height // scale, width // scale, encoder_filters(image_shape, architecture)[-1])


def parameter_count(image_shape, latent_dim, architecture, num_classes=None):
    """The model's count_params(), in closed form from the layer shapes."""
    def conv(in_channels, out_channels):  # kernel and bias; the same for a transposed one
        return KERNEL_SIZE * KERNEL_SIZE * in_channels * out_channels + out_channels

    def dense(units_in, units_out):
        return units_in * units_out + units_out

    channels = image_shape[-1]
    filters = encoder_filters(image_shape, architecture)
    features = math.prod(feature_map_shape(image_shape, architecture))
    encoder = (sum(conv(c_in, c_out) for c_in, c_out in zip((channels,) + filters, filters))
               + dense(features + (num_classes or 0), HIDDEN_UNITS)
               + 2 * dense(HIDDEN_UNITS, latent_dim))
    mirrored = filters[::-1]  # the reshaped map has filters[-1] channels, as mirrored[0]
    decoder = (dense(latent_dim + (num_classes or 0), HIDDEN_UNITS) + dense(HIDDEN_UNITS, features)
               + sum(conv(c_in, c_out) for c_in, c_out in zip(mirrored[:1] + mirrored, mirrored))
               + conv(filters[0], channels))
    return encoder + decoder


def architecture_problem(image_shape, latent_dim, architecture):
    """None when this model can be built; else one paragraph saying what is wrong and what to
    do."""
    height, width, channels = image_shape
    shape = f"{height}x{width}x{channels}"
    if architecture not in ARCHITECTURES:
        return (f"Unknown architecture {architecture!r}; pass --architecture= with one of "
                f"{', '.join(ARCHITECTURES)}.")
    if min(height, width) < MIN_SIDE:
        return (f"{shape} images are too small for either architecture: both need at least "
                f"{MIN_SIDE} pixels on a side, since a 3x3 convolution on a smaller image sees "
                f"mostly padding. Pass a larger --image_size to resize the images.")
    if architecture == "strided" and strided_halvings(image_shape) == 0:
        return (f"The strided architecture halves the resolution with stride-2 convolutions, and "
                f"{shape} images cannot be halved even once: that needs both sides even and at "
                f"least {2 * MIN_SIDE} pixels. Pass an --image_size with even sides of at least "
                f"{2 * MIN_SIDE} (for example 28, 32 or 64), or --architecture=article.")
    count = parameter_count(image_shape, latent_dim, architecture)
    if count <= MAX_PARAMETERS:
        return None
    if architecture == "article":
        strided = parameter_count(image_shape, latent_dim, "strided")
        fix = ("pass --architecture=strided, which halves the resolution before its Dense layer "
               f"and has {strided:,} parameters for the same shape (or a smaller --image_size)")
        if strided_halvings(image_shape) == 0 or strided > MAX_PARAMETERS:
            fix = "pass a smaller --image_size"
        return (f"An article model for {shape} images would have {count:,} parameters, more than "
                f"the limit of {MAX_PARAMETERS:,}: its Dense layers grow with the pixel "
                f"count. To train on images this size, {fix}.")
    return (f"A strided model for {shape} images would have {count:,} parameters, more than the "
            f"limit of {MAX_PARAMETERS:,}: these sides halve only "
            f"{strided_halvings(image_shape)} time(s) before its Dense layer. Pass a smaller "
            f"--image_size, or one whose sides divide by 32 (such as 128 or 256) so that they "
            f"halve five times.")


def require_buildable(image_shape, latent_dim, architecture):
    problem = architecture_problem(image_shape, latent_dim, architecture)
    if problem is not None:
        raise ValueError(problem)


# ---- compute per image, from a built model's layer shapes ---------------------------------------
def forward_flops_per_image(model):
    """FLOPs (2 per multiply-add) of one image's forward pass through every Conv2D,
    Conv2DTranspose and Dense layer of model, nested models included, from the layer shapes."""
    return 2 * _multiply_adds_per_image(model)


def _multiply_adds_per_image(model):
    from keras import Model, layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, Model):
            total += _multiply_adds_per_image(layer)
        elif isinstance(layer, layers.Conv2DTranspose):
            # A transposed convolution scatters every input pixel through its whole kernel, so its
            # work is per input pixel: equal to the output's pixel count at stride 1, a quarter
            # of it at stride 2 (counting output pixels would overstate it 4x).
            height, width, in_channels = layer.input.shape[1:]
            k_h, k_w = layer.kernel_size
            total += height * width * k_h * k_w * in_channels * layer.filters
        elif isinstance(layer, layers.Conv2D):
            # A convolution computes only the outputs it keeps: a stride-2 one does its kernel
            # work at the halved output resolution.
            height, width, out_channels = layer.output.shape[1:]
            k_h, k_w = layer.kernel_size
            total += height * width * out_channels * k_h * k_w * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            positions = math.prod(layer.input.shape[1:-1])  # 1 after a Flatten
            total += positions * layer.input.shape[-1] * layer.units
    return total


def training_gflops_per_image(model):
    """GFLOPs of one image's training step: 3x the forward pass.

    The backward pass computes, per layer, the gradient with respect to its input and with
    respect to its weights, each a product as large as the forward one (Kaplan et al. 2020,
    "Scaling Laws for Neural Language Models", section 2.1).
    """
    return 3 * forward_flops_per_image(model) / 1e9
