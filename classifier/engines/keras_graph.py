"""Graph work on a Keras ResNet50: batch normalisation folded into the convolutions, and
the head that makes an untrained model's answers differ between images.

Keras internals relied on (Keras 3): `layer._inbound_nodes` / `node.parent_nodes` /
`node.operation` to find the layer feeding another, and `conv._outbound_nodes` to know a
convolution feeds nothing else; `keras.models.clone_model` walks the same graph. If a
Keras upgrade renames them, `test_folding_batch_norm_*` in the tests fails first.
"""

from __future__ import annotations

import functools

import numpy as np

from ..model import INPUT_SIZE, preprocess


def fold_batch_norm(keras, model):
    """A copy of `model` in which every BatchNormalization that directly follows a Conv2D
    is folded into that convolution's kernel and bias, and becomes a pass-through.

    At inference a batch normalisation is an affine map per channel, y = x * s + t with
    s = gamma / sqrt(variance + epsilon) and t = beta - mean * s, so conv(x, W) + b then
    normalised equals conv(x, W * s) + (b * s + t): the same function up to float32
    rounding. Keras runs each one as elementwise passes over the activations (a multiply
    and an add, 53 times in ResNet50); folded, they are gone (gain: docs/benchmarks.md).
    """
    folds = {}  # convolution name -> the batch normalisation it alone feeds
    for layer in model.layers:
        conv = only_input(layer) if isinstance(layer, keras.layers.BatchNormalization) else None
        if (
            isinstance(conv, keras.layers.Conv2D)
            and conv.use_bias
            and conv.data_format == "channels_last"
            and layer.axis in (-1, 3)
            and len(conv._outbound_nodes) == 1
        ):
            folds[conv.name] = layer
    folded_names = {bn.name for bn in folds.values()}

    def clone(layer):
        if layer.name in folded_names:
            return _pass_through()(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights or layer.name in folded_names:
            continue
        target = folded.get_layer(layer.name)
        if layer.name in folds:
            bn = folds[layer.name]
            kernel, bias = layer.get_weights()
            gamma, beta, mean, variance = (w.astype(np.float64) for w in _batch_norm_weights(bn))
            scale = gamma / np.sqrt(variance + bn.epsilon)
            target.set_weights(
                [
                    (kernel * scale).astype(np.float32),
                    ((bias - mean) * scale + beta).astype(np.float32),
                ]
            )
        else:
            target.set_weights(layer.get_weights())
    return folded


def only_input(layer):
    """The layer whose output is `layer`'s one input, or None (shared or multi-input
    layers). Keras's graph of nodes: internal, but what clone_model itself walks."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
        return None
    return nodes[0].parent_nodes[0].operation


def _batch_norm_weights(bn) -> list[np.ndarray]:
    """gamma, beta, moving mean, moving variance (ones, zeros where the layer has no scale
    or no centre)."""
    weights = iter(bn.get_weights())
    channels = bn.moving_mean.shape[0]
    gamma = next(weights) if bn.scale else np.ones(channels, np.float32)
    beta = next(weights) if bn.center else np.zeros(channels, np.float32)
    return [gamma, beta, *weights]


@functools.cache
def _pass_through():
    import keras

    class PassThrough(keras.layers.Layer):
        """Stands in for a batch normalisation folded into the convolution before it."""

        def call(self, inputs, training=None, mask=None):
            return inputs

    return PassThrough


def standardise_random_head(tf, keras, model, *, seed: int) -> None:
    """Make an untrained ResNet50 give different answers for different images.

    With freshly initialised weights, every image's pooled features share one large common
    component and the softmax picks the same class for all inputs. Standardising the
    classifier head's inputs over a few synthetic images (a change of the last layer's
    weights only; the compute is unchanged) spreads the answers across classes, which the
    serving tests need to check that each response belongs to its image.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE].astype(np.float32)
    images = []
    for _ in range(8):
        a, b, c = rng.uniform(0, 1, 3)
        f = rng.uniform(0.01, 0.2)
        red = 127 + 127 * np.sin(f * (a * xx + b * yy))
        green = 127 + 127 * np.cos(f * c * yy)
        blue = np.full_like(xx, rng.uniform(0, 255))
        images.append(np.stack([red, green, blue], axis=-1))
    features_model = keras.Model(model.input, model.get_layer("avg_pool").output)
    # Compiled, not eager: an eager pass leaves far more memory behind (docs/benchmarks.md).
    features = tf.function(lambda x: features_model(x, training=False))(
        preprocess(np.stack(images))
    ).numpy()
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    # Equalise the features' scales, without blowing up near-constant ones: dividing by a
    # tiny std would turn rounding differences between engines into visible ones. Then
    # make the kernel blind to the component every image shares (the calibration images'
    # mean direction): removed from the kernel, not through the bias, so that each class's
    # evidence stays in the features, where class activation maps (explain.py) show it.
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.maximum(std, std.mean())
    kernel = kernel / std[:, None]
    shared = mean / np.linalg.norm(mean)
    kernel = kernel - np.outer(shared, shared @ kernel)
    logits = features @ kernel
    scale = logits.std() / 3.0  # softmax neither flat nor saturated
    dense.set_weights([(kernel / scale).astype(np.float32), np.zeros_like(bias)])
