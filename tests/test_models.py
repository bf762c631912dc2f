import pytest
import torch

from trainers.models import (
    MODELS,
    ASPPClassifier,
    DeepLabV2,
    SegmentationNet,
    StartCheckpointError,
    TorchvisionDeepLab,
    build_model,
    fit_start_state,
    load_start_checkpoint,
    map_start_keys,
    pretrained_status,
)


def test_small_net_heads_features_and_parameter_split():
    net = SegmentationNet(5, width=4, num_heads=2)
    x = torch.randn(2, 3, 32, 48)
    logits, features = net(x, with_features=True)
    assert len(logits) == 2 and all(t.shape == (2, 5, 32, 48) for t in logits)
    assert features.shape == (2, net.feature_channels, 16, 24)
    heads, backbone = set(map(id, net.head_parameters())), set(map(id, net.backbone_parameters()))
    assert heads and backbone and not heads & backbone
    assert heads | backbone == set(map(id, net.parameters()))


def test_detached_features_train_only_the_heads():
    net = SegmentationNet(3, width=4, num_heads=2)
    sum(h.sum() for h in net(torch.randn(1, 3, 16, 16), detach_features=True)).backward()
    assert all(p.grad is not None for p in net.head_parameters())
    assert all(p.grad is None for p in net.backbone_parameters())


def test_mobilenet_deeplab_two_heads_and_local_pretrained_weights(tmp_path):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(0)
    imagenet = mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(imagenet.state_dict(), path)
    net = TorchvisionDeepLab("deeplabv3_mobilenet_v3_large", num_classes=4, num_heads=2, pretrained=str(path))
    assert torch.equal(net.backbone["0"][0].weight, imagenet.features[0][0].weight)
    net.eval()
    logits = net(torch.randn(1, 3, 64, 64))
    assert len(logits) == 2 and logits[0].shape == (1, 4, 64, 64)
    assert pretrained_status("deeplabv3_mobilenet_v3_large", str(path)).endswith(f"backbone weights from {path}")


def test_no_pretrained_weights_means_random_ones_whatever_the_hub_cache_holds(tmp_path, monkeypatch):
    # '' is random weights on every node alike: a file that happens to lie in one node's torch hub
    # cache no longer changes what that node trains (model.pretrained: imagenet asks for it).
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(
        {"features.0.0.weight": torch.ones(16, 3, 3, 3)}, tmp_path / "checkpoints" / "mobilenet_v3_large-8738ca79.pth"
    )
    net = build_model("deeplabv3_mobilenet_v3_large", 4, 16, 1)
    assert not torch.equal(net.backbone["0"][0].weight, torch.ones(16, 3, 3, 3))
    assert "starts from random weights" in pretrained_status("deeplabv3_resnet101")
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build_model("deeplabv3_mobilenet_v3_large", 4, 16, 1, pretrained=str(tmp_path / "nope.pth"))


def test_registry():
    assert set(MODELS) == {"small_segnet", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "deeplabv2_resnet101"}
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 3, 8)


@pytest.fixture(scope="module")
def deeplabv2():
    torch.manual_seed(0)
    return DeepLabV2(num_classes=5, num_heads=1)


def test_deeplabv2_is_the_papers_model(deeplabv2):
    """Output stride 8 with 2048-channel features, ASPP at dilations 6/12/18/24, batch norm frozen."""
    from torchvision.ops import FrozenBatchNorm2d

    (logits,), features = deeplabv2(torch.randn(1, 3, 65, 65), with_features=True)
    assert logits.shape == (1, 5, 65, 65) and features.shape == (1, 2048, 9, 9)
    assert [conv.dilation for conv in deeplabv2.heads[0].conv2d_list] == [(d, d) for d in (6, 12, 18, 24)]
    norms = [m for m in deeplabv2.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)  # no trainable or running BN state
    assert not any("bn" in name or "downsample.1" in name for name, _ in deeplabv2.named_parameters())
    assert deeplabv2.heads[0].branches_summed == 4
    two = ASPPClassifier(8, 3, branches_summed=2)  # AdaptSegNet's released forward returns after branch 2
    x = torch.randn(1, 8, 30, 30)
    assert torch.allclose(two(x), two.conv2d_list[0](x) + two.conv2d_list[1](x))


def _adaptsegnet_layout(model: torch.nn.Module) -> dict:
    """Our DeepLab-V2 tensors under AdaptSegNet's GTA2Cityscapes_multi key names, as its file holds them."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            out["module." + key[len("backbone.") :]] = value.clone()
        else:
            out["module." + key.replace("heads.0.", "layer6.")] = value.clone()
    out["module.bn1.num_batches_tracked"] = torch.tensor(7)
    for i in range(4):  # the auxiliary classifier on layer3 (1024 channels), which is not used
        out[f"module.layer5.conv2d_list.{i}.weight"] = torch.zeros(5, 1024, 3, 3)
        out[f"module.layer5.conv2d_list.{i}.bias"] = torch.zeros(5)
    return out


def test_an_adaptsegnet_checkpoint_loads_by_the_documented_key_mapping(deeplabv2):
    file_state = _adaptsegnet_layout(deeplabv2)  # what torch.load gives for its file (the file path: below)
    expected = {k: v.clone() for k, v in deeplabv2.state_dict().items()}
    with torch.no_grad():
        for tensor in deeplabv2.state_dict().values():
            tensor.zero_()
    fit_start_state(deeplabv2, file_state, "deeplabv2_resnet101")
    assert all(torch.equal(deeplabv2.state_dict()[k], v) for k, v in expected.items())
    assert set(map_start_keys(file_state, "deeplabv2_resnet101")) == set(expected)  # layer5 and counters dropped


def test_a_checkpoint_that_does_not_fit_names_the_first_bad_key(deeplabv2, tmp_path):
    state = _adaptsegnet_layout(deeplabv2)
    state["module.layer6.conv2d_list.0.weight"] = torch.zeros(21, 2048, 3, 3)  # Pascal VOC's 21 classes
    with pytest.raises(
        StartCheckpointError,
        match=r"'heads.0.conv2d_list.0.weight' is \(21, 2048, 3, 3\) there, "
        r"the model needs \(5, 2048, 3, 3\)",
    ):
        fit_start_state(deeplabv2, state, "deeplabv2_resnet101")
    del state["module.layer1.0.conv1.weight"]
    with pytest.raises(StartCheckpointError, match="it has no 'backbone.layer1.0.conv1.weight'"):
        fit_start_state(deeplabv2, state, "deeplabv2_resnet101")
    (tmp_path / "junk.pth").write_bytes(b"not a model")
    with pytest.raises(StartCheckpointError, match="unreadable"):
        load_start_checkpoint(deeplabv2, tmp_path / "junk.pth", "deeplabv2_resnet101")
    small = SegmentationNet(5, width=4)
    torch.save({**small.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(
        StartCheckpointError, match="extra.pth' does not fit model 'small_segnet': the model has no 'extra.weight'"
    ):
        load_start_checkpoint(small, tmp_path / "extra.pth", "small_segnet")


def test_deeplabv2_trains_a_step_at_batch_size_one():
    """G and LabOR's selector network S, both DeepLab-V2, at one source and one target image per step, with SGD."""
    from experiment_config import load_config
    from trainers.engine import build_adaptation_models, build_optimizers, loss_weights
    from trainers.step import adaptation_step

    cfg = load_config(
        None,
        {
            "model.name": "deeplabv2_resnet101",
            "adapt.batch_size": 1,
            "source.batch_size": 1,
            "adapt.optimizer": "sgd",
            "adapt.head_lr_factor": 10.0,
            "adapt.weight_decay": 5e-4,
            "data.class_set": "cityscapes19",
            "adapt.selector_backbone_step": True,  # MCD's step C too: every part of S's update runs
        },
    )
    weights = loss_weights(cfg, "adapt")
    models = build_adaptation_models(cfg, 19, weights)
    optimizers = build_optimizers(models, cfg, "adapt")
    assert isinstance(optimizers.segmenter, torch.optim.SGD)
    assert [g["lr"] for g in optimizers.segmenter.param_groups] == pytest.approx([1e-3, 1e-2])
    before = {k: v.clone() for k, v in models.segmenter.state_dict().items()}
    selector_before = {k: v.clone() for k, v in models.selector.state_dict().items()}
    # 33x33 is 5x5 at output stride 8: every layer runs, at a CPU cost a test can afford.
    source = (torch.randn(1, 3, 33, 33), torch.randint(0, 19, (1, 33, 33)))
    target = (torch.randn(1, 3, 33, 33), torch.full((1, 33, 33), 255, dtype=torch.int64))
    target[1][0, 10, 20] = 3
    losses = adaptation_step(models, optimizers, source, target, weights)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert {"target_ce", "adversarial", "selector_discrepancy_backbone"} <= set(losses)
    after = models.segmenter.state_dict()
    assert not torch.equal(after["heads.0.conv2d_list.0.weight"], before["heads.0.conv2d_list.0.weight"])
    assert not torch.equal(after["backbone.layer4.2.conv3.weight"], before["backbone.layer4.2.conv3.weight"])
    assert torch.equal(after["backbone.layer1.0.bn1.running_mean"], before["backbone.layer1.0.bn1.running_mean"])
    moved = models.selector.state_dict()
    assert not torch.equal(moved["backbone.layer4.2.conv3.weight"], selector_before["backbone.layer4.2.conv3.weight"])


def test_batch_statistics_models_refuse_batch_size_one_before_anything_starts():
    from experiment_config import ConfigError, load_config

    with pytest.raises(
        ConfigError,
        match=r"config key 'adapt.batch_size': model 'deeplabv3_mobilenet_v3_large' "
        r"normalises with batch statistics and needs >= 2 images",
    ):
        load_config(None, {"model.name": "deeplabv3_mobilenet_v3_large", "adapt.batch_size": 1})
    load_config(None, {"model.name": "deeplabv2_resnet101", "adapt.batch_size": 1, "source.batch_size": 1})
