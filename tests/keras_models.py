"""Small Keras architectures for the tests: every form of ReLU, the same network as
Sequential, functional and subclassed model, a nested model, a multi-output model."""
import keras
import numpy as np
import tensorflow as tf

L = keras.layers


def relu_forms(size=12, seed=0):
    """A functional model with a ReLU in each form Keras has: fused activation="relu" in
    Conv2D and Dense, a ReLU layer, Activation("relu"), ReLU(max_value=6) fed by a scaled
    conv so that it saturates, and a keras.ops.relu node."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv_fused")(inp)
    x = L.ReLU(name="relu_layer")(L.Conv2D(6, 3, padding="same", name="conv_b")(x))
    x = L.Activation("relu", name="act_relu")(L.Conv2D(6, 3, padding="same", name="conv_c")(x))
    x = L.Rescaling(20.0, name="scale")(L.Conv2D(6, 3, padding="same", name="conv_d")(x))
    x = L.ReLU(max_value=6.0, name="relu6")(x)
    x = keras.ops.relu(L.Conv2D(6, 3, strides=2, name="conv_e")(x))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(8, activation="relu", name="fc_fused")(x)
    return keras.Model(inp, L.Dense(3, name="fc")(x), name="relu_forms")


def reference_forward(model, x, relu):
    """``relu_forms`` written out with tf.nn ops and the model's weights, each ReLU given
    by the caller: ``relu(z, upper)``."""
    def conv(name, z, stride=1, padding="SAME"):
        w, b = model.get_layer(name).get_weights()
        return tf.nn.conv2d(z, w, stride, padding) + b

    def dense(name, z):
        w, b = model.get_layer(name).get_weights()
        return tf.matmul(z, w) + b

    z = relu(conv("conv_fused", x), None)
    z = relu(conv("conv_b", z), None)
    z = relu(conv("conv_c", z), None)
    z = relu(conv("conv_d", z) * 20.0, 6.0)
    z = relu(conv("conv_e", z, 2, "VALID"), None)
    z = relu(dense("fc_fused", tf.reduce_mean(z, axis=(1, 2))), None)
    return dense("fc", z)


class SubclassedNet(keras.Model):
    """The layers of ``relu_forms`` called from a hand-written ``call`` (a ReLU layer for the ops node)."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.conv_fused = L.Conv2D(6, 3, padding="same", activation="relu", name="conv_fused")
        self.stage = [L.Conv2D(6, 3, padding="same", name="conv_b"), L.ReLU(name="relu_layer")]
        self.conv_c = L.Conv2D(6, 3, padding="same", name="conv_c")
        self.act = L.Activation("relu", name="act_relu")
        self.conv_d = L.Conv2D(6, 3, padding="same", name="conv_d")
        self.relu6 = L.ReLU(max_value=6.0, name="relu6")
        self.conv_e = L.Conv2D(6, 3, strides=2, name="conv_e")
        self.relu_e = L.ReLU(name="relu")
        self.heads = {"fc_fused": L.Dense(8, activation="relu", name="fc_fused"), "fc": L.Dense(3, name="fc")}

    def call(self, x, training=None):
        x = self.conv_fused(x)
        for layer in self.stage:
            x = layer(x)
        x = self.act(self.conv_c(x))
        x = self.relu6(self.conv_d(x) * 20.0)
        x = self.relu_e(self.conv_e(x))
        x = self.heads["fc_fused"](keras.ops.mean(x, axis=(1, 2)))
        return self.heads["fc"](x)


def copy_weights(source, target, names):
    for name in names:
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def tiny_cnn(kind="functional", size=16, classes=4, seed=0):
    """The same small CNN as a Sequential, functional or subclassed model (same weights)."""
    keras.utils.set_random_seed(seed)

    def layers():
        return [L.Conv2D(8, 3, padding="same", name="conv1"), L.BatchNormalization(name="bn1"), L.ReLU(name="relu1"),
                L.MaxPooling2D(2, name="pool1"), L.Conv2D(8, 3, activation="relu", name="conv2"),
                L.GlobalAveragePooling2D(name="gap"), L.Dense(classes, name="fc")]

    if kind == "sequential":
        model = keras.Sequential([keras.Input((size, size, 3)), *layers()], name="seq")
    elif kind == "functional":
        x = inp = keras.Input((size, size, 3))
        for layer in layers():
            x = layer(x)
        model = keras.Model(inp, x, name="func")
    else:
        class Chain(keras.Model):
            def __init__(self):
                super().__init__(name="chain")
                self.parts = layers()

            def call(self, x, training=None):
                for layer in self.parts:
                    x = layer(x, training=training) if isinstance(layer, L.BatchNormalization) else layer(x)
                return x

        model = Chain()
        model(np.zeros((1, size, size, 3), np.float32))
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(seed)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 1.5, 8)])
    return model


def nested(size=16, seed=0):
    """A base network inside the user's model, with a head of its own."""
    keras.utils.set_random_seed(seed)
    base_in = keras.Input((size, size, 3))
    y = L.Conv2D(6, 3, padding="same", activation="relu", name="block1_conv1")(base_in)
    y = L.Conv2D(6, 3, padding="same", name="block1_conv2")(y)
    y = L.ReLU(name="block1_relu")(y)
    base = keras.Model(base_in, L.MaxPooling2D(2, name="block1_pool")(y), name="base")
    inp = keras.Input((size, size, 3))
    z = L.Conv2D(4, 1, name="head_conv")(base(inp))
    z = L.GlobalAveragePooling2D(name="gap")(L.ReLU(name="head_relu")(z))
    return keras.Model(inp, L.Dense(3, name="fc")(z), name="user_model"), base


def two_heads(size=16, seed=0):
    """A functional model with two outputs, "logits" (2 scores) and "aux" (3 scores)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    f = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(4, 3, activation="relu", name="conv")(inp))
    return keras.Model(inp, [L.Dense(2, name="logits")(f), L.Dense(3, name="aux")(f)], name="two_heads")


def snapshot(model):
    """What a backend must leave as it was: every layer's activation, trainable flag and
    attributes, and every weight."""
    layers = model._flatten_layers()
    return ([vars(layer).get("activation") for layer in layers], [layer.trainable for layer in layers],
            [sorted(vars(layer)) for layer in layers], [v.numpy().copy() for v in model.weights])


def assert_unchanged(model, before):
    after = snapshot(model)
    assert before[:3] == after[:3]
    for a, b in zip(before[3], after[3], strict=True):
        np.testing.assert_array_equal(a, b)
