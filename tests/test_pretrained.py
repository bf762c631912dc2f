"""model.pretrained: torchvision's ImageNet weights through its weights API (cached per node), a local
file, file:// or s3:// (fetched once per node); a DeepLab model never trains from random weights by
accident. Nothing here reaches the network: every test refuses torch hub's download."""

import urllib.error
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from conftest import run_cli
from experiment_config import ConfigError, load_config, with_absolute_paths, with_overrides
from experiment_config.choices import IMAGENET_MODELS
from orchestrator.sweep.preflight import check_initial_weights, check_pretrained_object
from trainers import models
from trainers.models import (
    IMAGENET_WEIGHTS,
    PretrainedWeightsError,
    build_model,
    imagenet_file,
    pretrained_status,
    pretrained_weights_file,
    resolve_pretrained,
)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """torch hub's download (what torchvision's weights API calls) records its URL and fails, as offline."""
    attempts = []

    def refuse(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


def mobilenet_file(folder: Path, name: str) -> tuple[Path, dict]:
    """A small stand-in of ImageNet weights: a freshly initialised MobileNetV3-Large's state dict."""
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(1)
    state = mobilenet_v3_large(weights=None).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return folder / name, state


def test_every_model_with_imagenet_weights_is_named_in_the_config_choices():
    assert set(IMAGENET_MODELS) == set(IMAGENET_WEIGHTS)
    for name in IMAGENET_WEIGHTS:  # torchvision's weights API knows each name
        assert models.imagenet_weights(name).url.startswith("https://download.pytorch.org/models/")


def test_imagenet_weights_come_from_the_node_cache_without_any_download(tmp_path, no_downloads):
    cache = tmp_path / "weights"
    expected = imagenet_file("deeplabv3_mobilenet_v3_large", str(cache))
    assert expected.name == "mobilenet_v3_large-8738ca79.pth"  # torchvision's own file name, in the cache
    _, state = mobilenet_file(cache, expected.name)
    cfg = load_config(
        None,
        {
            "model.name": "deeplabv3_mobilenet_v3_large",
            "model.pretrained": "imagenet",
            "model.weights_cache": str(cache),
            "source.batch_size": 2,
            "adapt.batch_size": 2,
        },
    )
    path = pretrained_weights_file(cfg)
    assert path == str(expected)
    net = build_model("deeplabv3_mobilenet_v3_large", 4, 16, 2, pretrained=path)
    assert torch.equal(net.backbone["0"][0].weight, state["features.0.0.weight"])
    assert no_downloads == []
    assert "ImageNet backbone weights (MobileNet_V3_Large_Weights.IMAGENET1K_V1), from" in pretrained_status(
        cfg.model.name, "imagenet", str(cache)
    )


def test_deeplabv2_starts_from_an_imagenet_resnet101_file_through_the_training_models(tmp_path, no_downloads):
    """A real-size ResNet-101 state dict in torchvision's layout (random values) in the cache: G's and
    S's backbones take it whole (fc dropped), the heads keep their own weights."""
    from torchvision.models import resnet101

    from trainers.engine import build_adaptation_models

    cache = tmp_path / "hub"
    torch.manual_seed(2)
    state = resnet101(weights=None).state_dict()
    state["layer4.2.conv3.weight"].normal_()  # DeepLab-V2 starts this at zero: the file must overwrite it
    cache.mkdir()
    torch.save(state, cache / imagenet_file("deeplabv2_resnet101").name)
    cfg = load_config(
        None,
        {"model.name": "deeplabv2_resnet101", "model.pretrained": "imagenet", "model.weights_cache": str(cache)},
    )
    built = build_adaptation_models(cfg, 19)
    for network in (built.segmenter, built.selector):
        backbone = network.backbone.state_dict()
        assert torch.equal(backbone["conv1.weight"], state["conv1.weight"])
        assert torch.equal(backbone["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
        assert torch.equal(backbone["layer2.0.bn1.running_var"], state["layer2.0.bn1.running_var"])
    assert no_downloads == []


def test_without_the_file_and_offline_the_error_is_one_line_naming_what_to_do(tmp_path, no_downloads):
    with pytest.raises(PretrainedWeightsError) as caught:
        resolve_pretrained("deeplabv2_resnet101", "imagenet", str(tmp_path / "empty"))
    message = str(caught.value)
    url = "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    assert no_downloads == [url]  # one attempt, through torchvision's weights API, to its own URL
    assert "\n" not in message and message.startswith(f"model.pretrained 'imagenet': cannot download {url} into ")
    assert "copy resnet101-63fe2227.pth there on every node" in message
    assert not list((tmp_path / "empty").glob("*.pth"))  # nothing half-written left as if it were the file


def test_a_local_file_and_a_file_uri_are_used_as_they_are(tmp_path):
    path, _ = mobilenet_file(tmp_path, "backbone.pth")
    assert resolve_pretrained("deeplabv3_mobilenet_v3_large", str(path)) == str(path)
    assert resolve_pretrained("deeplabv3_mobilenet_v3_large", f"file://{path}") == str(path)
    assert resolve_pretrained("deeplabv3_mobilenet_v3_large", "") == ""


def test_s3_weights_are_fetched_once_per_node_through_the_storage_settings(s3_server, tmp_path):
    local, state = mobilenet_file(tmp_path / "upload", "mobilenet.pth")
    filesystem = pafs.S3FileSystem(endpoint_override=s3_server, region="us-east-1")
    with filesystem.open_output_stream("activeda-test/weights/mobilenet.pth") as out:
        out.write(local.read_bytes())
    uri = "s3://activeda-test/weights/mobilenet.pth"
    cfg = load_config(
        None,
        {
            "model.name": "deeplabv3_mobilenet_v3_large",
            "model.pretrained": uri,
            "model.weights_cache": str(tmp_path / "cache"),
            "storage.uri": "s3://activeda-test/runs",
            "storage.endpoint": s3_server,
            "source.batch_size": 2,
            "adapt.batch_size": 2,
        },
    )
    check_pretrained_object(cfg)  # the pre-flight sees it
    fetched = pretrained_weights_file(cfg)
    assert Path(fetched).parent == tmp_path / "cache" and Path(fetched).read_bytes() == local.read_bytes()
    net = build_model("deeplabv3_mobilenet_v3_large", 4, 16, 1, pretrained=fetched)
    assert torch.equal(net.backbone["0"][0].weight, state["features.0.0.weight"])
    filesystem.delete_file("activeda-test/weights/mobilenet.pth")
    assert pretrained_weights_file(cfg) == fetched  # the node's copy: not fetched again
    with pytest.raises(ConfigError, match=r"^config key 'model.pretrained': no object at 's3://activeda-test/"):
        check_pretrained_object(cfg)
    missing = with_overrides(cfg, {"model.weights_cache": str(tmp_path / "x")})  # another node: not cached there
    with pytest.raises(PretrainedWeightsError, match=r"^model.pretrained 's3://activeda-test/weights/mobilenet.pth'"):
        pretrained_weights_file(missing)
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.pretrained": "imagenet"}, "model 'small_segnet' has no ImageNet weights; 'imagenet' is for: "),
        (
            {
                "model.name": "deeplabv2_resnet101",
                "model.deeplabv2_style": "adaptsegnet",
                "model.pretrained": "imagenet",
            },
            "'imagenet' is torchvision's ResNet-101 for RGB input; deeplabv2_style 'adaptsegnet' takes Caffe BGR",
        ),
        ({"model.pretrained": "https://example.com/w.pth"}, "unsupported URI 'https://example.com/w.pth'"),
        ({"model.pretrained": "s3://bucket-name"}, "must be s3://bucket/key of one object"),
        ({"model.pretrained": "file:///no/such/weights.pth"}, "file '/no/such/weights.pth' does not exist"),
    ],
)
def test_a_bad_pretrained_value_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert str(caught.value).startswith("config key 'model.pretrained': ") and message in str(caught.value)


def test_names_and_uris_are_not_made_absolute_like_relative_paths(tmp_path):
    for value in ("imagenet", "s3://bucket-name/w.pth"):
        cfg = load_config(None, {"model.name": "deeplabv2_resnet101", "model.pretrained": value})
        assert with_absolute_paths(cfg, tmp_path).model.pretrained == value


def test_a_deeplab_model_that_would_train_from_random_weights_is_refused_unless_allowed(tmp_path):
    bare = {"model.name": "deeplabv2_resnet101"}
    with pytest.raises(ConfigError) as caught:
        check_initial_weights(load_config(None, bare))
    assert str(caught.value) == (
        "config key 'model.pretrained': is '' and no source.checkpoint is given, so model 'deeplabv2_resnet101' "
        "would train from random weights; set model.pretrained: imagenet (or a file, or s3://bucket/key), or "
        "model.allow_random_init: true"
    )
    check_initial_weights(load_config(None, {**bare, "model.allow_random_init": True}))
    check_initial_weights(load_config(None, {**bare, "model.pretrained": "imagenet"}))
    checkpoint = tmp_path / "g.pth"
    checkpoint.write_bytes(b"given")
    check_initial_weights(load_config(None, {**bare, "source.checkpoint": str(checkpoint)}))  # it holds the backbone
    check_initial_weights(load_config(None))  # small_segnet has no pretrained variant


def test_the_sweep_refuses_deeplab_v2_from_random_weights_before_any_work(tmp_path):
    result = run_cli("orchestrator.sweep", "--smoke", "model.name=deeplabv2_resnet101", cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: config key 'model.pretrained': is '' and no source.checkpoint is given, so model "
        "'deeplabv2_resnet101' would train from random weights; set model.pretrained: imagenet (or a file, or "
        "s3://bucket/key), or model.allow_random_init: true"
    ]
    assert list(tmp_path.iterdir()) == []  # no tracking store, no output folder, no data


def test_the_status_line_says_where_the_weights_come_from(tmp_path):
    assert "starts from random weights (model.pretrained is '')" in pretrained_status("deeplabv2_resnet101")
    assert "each node downloads it there once" in pretrained_status("deeplabv2_resnet101", "imagenet", str(tmp_path))
    assert "fetched once per node into" in pretrained_status("deeplabv2_resnet101", "s3://b-1/w.pth", str(tmp_path))
    assert pretrained_status("small_segnet", "x.pth").endswith("(model.pretrained is not used)")
