"""A Keras file someone downloaded may carry code: a Lambda layer's function runs when the file
is deserialised. convscope.load refuses Lambda layers in .keras and legacy .h5 files unless
safe_mode=False, reading the file's configuration itself before Keras sees it."""
import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import convscope  # noqa: E402
from convscope.backends.tensorflow import _files  # noqa: E402

pytestmark = pytest.mark.backend("tensorflow")

X = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


def lambda_model():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.Lambda(lambda t: t * 2.0, name="double")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(h))


def plain_model():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(h))


def save_h5(model, path):
    """Keras 3's legacy HDF5 writer; a test that needs it skips only where this Keras lacks it."""
    try:
        keras.saving.save_model(model, str(path))
    except (ValueError, NotImplementedError, ImportError) as err:  # pragma: no cover - depends on the Keras version
        pytest.skip(f"this Keras cannot write legacy .h5 files ({err})")
    return path


@pytest.fixture
def files(tmp_path):
    model = lambda_model()
    want = convscope.load(model).forward(X)
    keras_file = tmp_path / "lambda.keras"
    model.save(keras_file)
    h5_file = save_h5(model, tmp_path / "lambda.h5")
    return keras_file, h5_file, want


def test_a_lambda_layer_in_a_keras_file_is_refused(files):
    keras_file, _, _ = files
    with pytest.raises(ValueError, match=r"^convscope\.load: the \.keras file '.*lambda\.keras' has Lambda layers "
                                         r"\('double'\), whose Python code would run as the file is loaded; convscope "
                                         r"refuses them \(safe mode\)\. If you trust the file, pass safe_mode=False "
                                         r"to convscope\.load\.$"):
        convscope.load(keras_file)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_lambda_layer_in_a_legacy_h5_file_is_refused_before_keras_reads_it(files, monkeypatch):
    _, h5_file, _ = files
    with h5py.File(h5_file, "r") as f:
        config = f.attrs["model_config"]
    assert "Lambda" in (config.decode() if isinstance(config, bytes) else config)

    def never(*args, **kwargs):
        raise AssertionError("Keras was asked to deserialise a file convscope should have refused")

    monkeypatch.setattr(keras.saving, "load_model", never)
    with pytest.raises(ValueError, match=r"^convscope\.load: the legacy \.h5 file '.*lambda\.h5' has Lambda layers "
                                         r"\('double'\), whose Python code would run as the file is loaded; convscope "
                                         r"refuses them \(safe mode\)\. If you trust the file, pass safe_mode=False"):
        convscope.load(h5_file)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_safe_mode_false_loads_a_trusted_file(files):
    keras_file, h5_file, want = files
    np.testing.assert_allclose(convscope.load(keras_file, safe_mode=False).forward(X), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(convscope.load(h5_file, safe_mode=False).forward(X), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"^The 'safe_mode' parameter of convscope\.load must be True or False\. "
                                        r"Got 'no' instead\.$"):
        convscope.load(keras_file, safe_mode="no")


def test_a_hand_made_h5_with_a_lambda_is_refused(tmp_path):
    """An .h5 written by hand (any writer could have made it): only its model_config is read."""
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 8, 8, 3], "name": "in"}},
        {"class_name": "Lambda", "config": {"name": "payload", "function": ["4wAAAAAAAAAA", None, None],
                                            "function_type": "lambda"}}]}}
    path = tmp_path / "made.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        f.create_group("model_weights")
    with pytest.raises(ValueError, match=r"^convscope\.load: the legacy \.h5 file '.*made\.h5' has Lambda layers "
                                         r"\('payload'\), whose Python code"):
        convscope.load(path)


def test_a_lambda_nested_in_a_submodel_is_found(tmp_path):
    inner = lambda_model()
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, inner(inputs))
    path = tmp_path / "nested.keras"
    outer.save(path)
    with pytest.raises(ValueError, match=r"has Lambda layers \('double'\)"):
        convscope.load(path)


def test_files_that_are_not_keras_are_refused_clearly(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=r"^convscope\.load: '.*bad\.h5' is not a readable HDF5 Keras file"):
        convscope.load(bad)
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("config.json", "{" * 100_000)
    with pytest.raises(ValueError, match=r"the model configuration in the Keras file '.*broken\.keras' is not valid"):
        convscope.load(broken)


def test_config_size_is_bounded(tmp_path, monkeypatch):
    path = tmp_path / "plain.keras"
    plain_model().save(path)
    monkeypatch.setattr(_files, "MAX_CONFIG_BYTES", 16)
    with pytest.raises(ValueError, match=r"the config\.json of the Keras file '.*plain\.keras' is larger than 16 bytes"):
        convscope.load(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_files_without_lambda_layers_load_as_before(tmp_path):
    model = plain_model()
    want = convscope.load(model).forward(X)
    model.save(tmp_path / "plain.keras")
    h5 = save_h5(model, tmp_path / "plain.h5")
    for path in (tmp_path / "plain.keras", h5):
        np.testing.assert_allclose(convscope.load(path).forward(X), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(convscope.load(convscope.data.demo_path("keras")).forward(
        np.zeros((1, 3, 64, 64), np.float32)).shape, (1, 4))
