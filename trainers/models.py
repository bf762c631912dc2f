"""Segmentation networks.

``SegmentationNet`` is a small fully convolutional network for the CPU; ``TorchvisionDeepLab``
wraps torchvision's DeepLabV3 (ResNet-101, MobileNetV3) for real runs; ``DeepLabV2`` is the
papers' model (DeepLab-V2 on ResNet-101 with the ASPP classifier, batch norm frozen). With
``num_heads=1`` a network is the segmenter G; with ``num_heads=2`` it is LabOR's selector network S:
one shared backbone F and two pixel classifiers C1, C2 whose disagreement marks uncertain pixels.

``load_start_checkpoint`` reads a released model file (a plain state dict: AdaptSegNet's,
RIPU's, torchvision's or this project's own key names) into a network; ``START_KEY_MAPPING``
lists how each layout's keys map onto ours (``docs/protocol.md`` shows it as a table).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn import functional as F

from experiment_config.schema import S3_OBJECT

from .files import staged


def _conv_block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # GroupNorm rather than BatchNorm: results do not depend on batch size or worker count.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class MultiHeadSegmenter(nn.Module):
    """What every network here offers: shared features, ``num_heads`` pixel classifiers on top.

    forward(x: (N, 3, H, W)) -> tuple of ``num_heads`` logits, each (N, K, H, W); with
    ``with_features=True`` -> (logits tuple, features). The features are the shared representation
    f(x) (``feature_channels`` channels at reduced resolution), where Tzeng's domain classifier and
    LabOR's heads attach. ``detach_features=True`` stops gradients at f, so only the heads learn from
    that pass (MCD's "classifiers only" step). Everything goes through ``forward`` so that DDP sees
    every pass. Subclasses define ``features(x)`` and set ``self.heads`` (1x1 convolutions).
    """

    heads: nn.ModuleList
    feature_channels: int

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, features: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        return tuple(
            F.interpolate(head(features), size=size, mode="bilinear", align_corners=False) for head in self.heads
        )

    def head_parameters(self):
        return self.heads.parameters()

    def backbone_parameters(self):
        head_ids = {id(p) for p in self.heads.parameters()}
        return (p for p in self.parameters() if id(p) not in head_ids)

    def forward(self, x: torch.Tensor, with_features: bool = False, detach_features: bool = False):
        features = self.features(x)
        logits = self.classify(features.detach() if detach_features else features, x.shape[-2:])
        return (logits, features) if with_features else logits


class SegmentationNet(MultiHeadSegmenter):
    """Small CPU network: backbone at 1/4 resolution with a 1/2-resolution skip; features at 1/2.

    Uses GroupNorm, not BatchNorm, so results do not depend on batch size or worker count.
    """

    def __init__(self, num_classes: int, width: int = 32, num_heads: int = 1):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.num_classes, self.width, self.num_heads = num_classes, width, num_heads
        self.stem = _conv_block(3, width)
        self.down1 = _conv_block(width, 2 * width, stride=2)
        self.down2 = _conv_block(2 * width, 4 * width, stride=2)
        self.context = nn.Sequential(
            _conv_block(4 * width, 4 * width, dilation=2), _conv_block(4 * width, 4 * width, dilation=4)
        )
        self.fuse = _conv_block(4 * width + 2 * width, 2 * width)
        self.feature_channels = 2 * width
        self.heads = nn.ModuleList(nn.Conv2d(2 * width, num_classes, 1) for _ in range(num_heads))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        half = self.down1(self.stem(x))
        quarter = self.context(self.down2(half))
        up = F.interpolate(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, half], dim=1))


# torchvision DeepLabV3 variants: builder, and how the classification checkpoint's keys map onto the
# segmentation backbone.
_DEEPLAB = {
    "deeplabv3_resnet101": ("deeplabv3_resnet101", ""),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", "features."),
}

# model.pretrained: imagenet -- the ImageNet weights of each model's backbone, by the name torchvision's
# weights API gives them (``torchvision.models.get_weight``): the weights torchvision's own DeepLabV3
# builders take as ``weights_backbone``. DeepLab-V2's backbone is torchvision's ResNet-101, and RIPU
# starts from torchvision's ImageNet ResNet-101 file (its configs' MODEL.WEIGHTS).
IMAGENET_WEIGHTS = {
    "deeplabv3_resnet101": "ResNet101_Weights.IMAGENET1K_V1",
    "deeplabv3_mobilenet_v3_large": "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "deeplabv2_resnet101": "ResNet101_Weights.IMAGENET1K_V1",
}


class PretrainedWeightsError(ValueError):
    """``model.pretrained`` could not be made a local file on this node; the message is one line."""


def weights_cache_dir(cache: str = "") -> Path:
    """Where this node keeps downloaded and fetched weights: ``model.weights_cache``, else torch hub's."""
    return Path(cache) if cache else Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_weights(name: str):
    """torchvision's ``WeightsEnum`` member of ``name``'s ImageNet backbone weights."""
    from torchvision.models import get_weight

    if name not in IMAGENET_WEIGHTS:
        raise PretrainedWeightsError(
            f"model '{name}' has no ImageNet weights; 'imagenet' is for: {', '.join(IMAGENET_WEIGHTS)}"
        )
    return get_weight(IMAGENET_WEIGHTS[name])


def imagenet_file(name: str, cache: str = "") -> Path:
    """The file torchvision's weights API keeps ``name``'s ImageNet weights in (it may not exist yet)."""
    return weights_cache_dir(cache) / Path(urlparse(imagenet_weights(name).url).path).name


def download_imagenet(name: str, cache: str = "") -> Path:
    """``name``'s ImageNet backbone weights as a local file: from the cache, else downloaded there once
    through torchvision's weights API (``WeightsEnum.get_state_dict``, which checks the file's SHA-256
    prefix against its name). Raises ``PretrainedWeightsError`` (one line) when it cannot download."""
    weights, path = imagenet_weights(name), imagenet_file(name, cache)
    if path.is_file():
        return path
    try:
        weights.get_state_dict(progress=False, check_hash=True, model_dir=str(path.parent))
    except Exception as err:  # URLError, OSError, a hash mismatch (RuntimeError): all mean "no file"
        raise PretrainedWeightsError(
            f"model.pretrained 'imagenet': cannot download {weights.url} into {path.parent} "
            f"({type(err).__name__}: {_one_line(err)}); offline, copy {path.name} there on every node, "
            f"or set model.pretrained to a file or an s3:// URI"
        ) from None
    return path


def fetch_s3_weights(uri: str, cache: str = "", endpoint: str = "", region: str = "") -> Path:
    """``s3://bucket/key`` as a local file in this node's weights cache, fetched once (written whole,
    then renamed: workers of one node that fetch at once each leave a complete file). The cached copy
    is named after the URI: a file replaced under the same URI needs a new URI (or the cache cleared)."""
    import pyarrow.fs as pafs

    match = S3_OBJECT.match(uri)
    if match is None:
        raise PretrainedWeightsError(f"model.pretrained must be s3://bucket/key of one object, got {uri!r}")
    name = Path(match["key"]).name
    path = weights_cache_dir(cache) / f"{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{name}"
    if path.is_file():
        return path
    try:
        # As orchestrator.cluster.storage opens storage.uri: an S3-compatible server needs its endpoint.
        region = region or ("us-east-1" if endpoint else pafs.resolve_s3_region(match["bucket"]))
        filesystem = pafs.S3FileSystem(endpoint_override=endpoint or None, region=region)
        with (
            filesystem.open_input_stream(f"{match['bucket']}/{match['key']}") as remote,
            staged(path) as staging,
            open(staging, "wb") as local,
        ):
            while block := remote.read(1 << 22):
                local.write(block)
    except OSError as err:
        raise PretrainedWeightsError(f"model.pretrained '{uri}': cannot fetch it ({_one_line(err)})") from None
    return path


def resolve_pretrained(name: str, spec: str, cache: str = "", endpoint: str = "", region: str = "") -> str:
    """A ``model.pretrained`` value as a local file on this node ('' for none): 'imagenet' and
    ``s3://`` are downloaded into the node's weights cache on first use, ``file://`` is its path."""
    if not spec:
        return ""
    if spec == "imagenet":
        return str(download_imagenet(name, cache))
    if spec.startswith("s3://"):
        return str(fetch_s3_weights(spec, cache, endpoint, region))
    return spec.removeprefix("file://")


def pretrained_weights_file(cfg) -> str:
    """``cfg.model.pretrained`` as a local file on this node ('' for none): ``resolve_pretrained`` with
    the config's cache folder and storage endpoint. Every Train worker calls it where it builds models."""
    return resolve_pretrained(
        cfg.model.name, cfg.model.pretrained, cfg.model.weights_cache, cfg.storage.endpoint, cfg.storage.region
    )


def pretrained_status(name: str, pretrained: str = "", cache: str = "") -> str:
    """One line saying where the backbone's initial weights come from (for the user, at start-up)."""
    if name not in IMAGENET_WEIGHTS:
        unused = " (model.pretrained is not used)" if pretrained else ""
        return f"model '{name}' starts from random weights: it has no pretrained variant{unused}"
    if not pretrained:
        return (
            f"model '{name}': the backbone starts from random weights (model.pretrained is ''), "
            f"unless source.checkpoint gives the model"
        )
    if pretrained == "imagenet":
        path = imagenet_file(name, cache)
        where = f"from {path}" if path.is_file() else f"not in {path.parent} yet: each node downloads it there once"
        return f"model '{name}': torchvision's ImageNet backbone weights ({IMAGENET_WEIGHTS[name]}), {where}"
    if pretrained.startswith("s3://"):
        return (
            f"model '{name}': backbone weights from {pretrained}, fetched once per node into {weights_cache_dir(cache)}"
        )
    return f"model '{name}': backbone weights from {pretrained.removeprefix('file://')}"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class TorchvisionDeepLab(MultiHeadSegmenter):
    """torchvision's DeepLabV3 (ResNet-101 or MobileNetV3-Large backbone) with ``num_heads`` classifiers.

    f(x) is the output of the DeepLab head before its last 1x1 convolution (ASPP + 3x3 conv, 256
    channels, 1/8 or 1/16 resolution); each head is a 1x1 convolution to K classes. Nothing is
    downloaded here: ``pretrained`` is a local file of ImageNet backbone weights ('' for none;
    ``resolve_pretrained`` makes one of a ``model.pretrained`` value).
    """

    def __init__(self, arch: str, num_classes: int, num_heads: int = 1, pretrained: str = ""):
        super().__init__()
        from torchvision.models import segmentation

        builder, key_prefix = _DEEPLAB[arch]
        net = getattr(segmentation, builder)(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        self.backbone = net.backbone
        self.neck = nn.Sequential(*list(net.classifier.children())[:-1])
        self.feature_channels = 256
        self.heads = nn.ModuleList(nn.Conv2d(256, num_classes, 1) for _ in range(num_heads))
        if pretrained:
            self._load_backbone(_existing(pretrained), key_prefix)

    def _load_backbone(self, path: Path, key_prefix: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        mapped = {k[len(key_prefix) :]: v for k, v in state.items() if k.startswith(key_prefix)}
        own = self.backbone.state_dict()
        usable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
        if len(usable) < len(own) // 2:
            raise ValueError(
                f"pretrained weights '{path}' do not fit this backbone ({len(usable)} of {len(own)} tensors match)"
            )
        self.backbone.load_state_dict(usable, strict=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x)["out"])


# The two DeepLab-V2 layouts of the reference code (model.deeplabv2_style).
DEEPLABV2_STYLES = ("ripu", "adaptsegnet")
ASPP_DILATIONS = (6, 12, 18, 24)
# AdaptSegNet's (and DeepLab's Caffe) input: BGR, 0..255, minus this per-channel mean (B, G, R).
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


class ASPPClassifier(nn.Module):
    """DeepLab-V2's classifier: 3x3 convolutions at dilations 6, 12, 18, 24 from the features straight
    to K classes, summed (Chen et al., TPAMI 2017; AdaptSegNet ``Classifier_Module``, RIPU
    ``ASPP_Classifier_V2``). (N, C, h, w) -> (N, K, h, w).

    ``branches_summed``: how many of the four branches the forward pass adds. AdaptSegNet's released
    ``Classifier_Module.forward`` returns inside its loop, after the second branch, so its
    checkpoints were trained (and are evaluated) with dilations 6 and 12 only; 4 is the published
    model and RIPU's code. Every branch keeps its weights either way, so its checkpoints load.
    """

    def __init__(self, in_channels: int, num_classes: int, branches_summed: int = 4):
        super().__init__()
        self.branches_summed = branches_summed
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in ASPP_DILATIONS
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)  # as both references

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.conv2d_list[: self.branches_summed])


class DeepLabV2(MultiHeadSegmenter):
    """DeepLab-V2 on ResNet-101: output stride 8 (layer3 and layer4 dilated by 2 and 4), an ASPP
    classifier per head, every batch norm frozen (statistics and affine parameters fixed:
    ``torchvision.ops.FrozenBatchNorm2d``), so it trains at any batch size, 1 included.

    f(x) is layer4's output (2048 channels at 1/8 resolution); each head is an ``ASPPClassifier``.
    ``style`` picks the reference layout:

    - ``"ripu"``: torchvision's ResNet-101 (stride in the 3x3 convolution), ImageNet RGB input
      normalisation, all four ASPP branches: BIT-DA/RIPU's ``deeplabv2_resnet101``, which starts
      from torchvision's ImageNet weights.
    - ``"adaptsegnet"``: AdaptSegNet's ``model/deeplab_multi.py`` as released: stride in the first
      1x1 convolution, max-pool with ``ceil_mode``, dilation in every block of layer3 and layer4,
      Caffe input (BGR, 0..255, minus ``CAFFE_BGR_MEAN``; the model converts the pipeline's ImageNet-
      normalised RGB itself), two ASPP branches summed. For its released checkpoints.

    Batch norm: RIPU (``MODEL.FREEZE_BN``) fixes statistics and affine parameters, as here;
    AdaptSegNet fixes only the affine parameters and keeps the layers in train mode (batch
    statistics, batch size 1, source and target in separate passes). Here source and target share
    one pass, which batch statistics would mix, so both styles use the running statistics.
    """

    def __init__(self, num_classes: int, num_heads: int = 1, style: str = "ripu", pretrained: str = ""):
        super().__init__()
        from torchvision.models import resnet101
        from torchvision.ops import FrozenBatchNorm2d

        if style not in DEEPLABV2_STYLES:
            raise ValueError(f"unknown DeepLab-V2 style '{style}'; choose one of: {', '.join(DEEPLABV2_STYLES)}")
        self.style = style
        net = resnet101(weights=None, replace_stride_with_dilation=[False, True, True], norm_layer=FrozenBatchNorm2d)
        del net.fc, net.avgpool
        # Frozen batch norm cannot normalise random weights: the 33 residual blocks would each about
        # double the activations. So (until pretrained weights or a checkpoint overwrite them) every
        # residual branch starts at zero in its last convolution, the block an identity; unlike a zero
        # batch-norm scale, which frozen would stay zero, the convolution learns.
        for block in (*net.layer1, *net.layer2, *net.layer3, *net.layer4):
            nn.init.zeros_(block.conv3.weight)
        if style == "adaptsegnet":
            net.maxpool.ceil_mode = True
            first = net.layer2[0]
            first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
            for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
                layer[0].conv2.dilation, layer[0].conv2.padding = (dilation, dilation), (dilation, dilation)
            # ImageNet-normalised RGB -> Caffe BGR 0..255 minus mean: x_caffe = x * scale + shift (per channel).
            from .data.transforms import MEAN, STD

            order = [2, 1, 0]
            scale = torch.tensor([255.0 * STD[c] for c in order]).view(1, 3, 1, 1)
            shift = torch.tensor([255.0 * MEAN[c] - CAFFE_BGR_MEAN[i] for i, c in enumerate(order)]).view(1, 3, 1, 1)
            self.register_buffer("caffe_scale", scale, persistent=False)
            self.register_buffer("caffe_shift", shift, persistent=False)
        self.backbone = net
        self.feature_channels = 2048
        branches = 2 if style == "adaptsegnet" else len(ASPP_DILATIONS)
        self.heads = nn.ModuleList(ASPPClassifier(2048, num_classes, branches) for _ in range(num_heads))
        if pretrained:
            load_start_checkpoint(
                self, _existing(pretrained), "deeplabv2_resnet101", include_heads=False, what="pretrained weights"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "adaptsegnet":
            x = x[:, [2, 1, 0]] * self.caffe_scale + self.caffe_shift
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _existing(pretrained: str) -> Path:
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained '{pretrained}' does not exist")
    return path


def build_small_segnet(num_classes: int, width: int, num_heads: int, pretrained: str = "", **_) -> nn.Module:
    return SegmentationNet(num_classes, width=width, num_heads=num_heads)


def _deeplab_builder(arch: str):
    def build(num_classes: int, width: int, num_heads: int, pretrained: str = "", **_) -> nn.Module:
        return TorchvisionDeepLab(arch, num_classes, num_heads=num_heads, pretrained=pretrained)

    return build


def build_deeplabv2(
    num_classes: int, width: int, num_heads: int, pretrained: str = "", deeplabv2_style: str = "ripu", **_
) -> nn.Module:
    return DeepLabV2(num_classes, num_heads=num_heads, style=deeplabv2_style, pretrained=pretrained)


MODELS = {
    "small_segnet": build_small_segnet,
    "deeplabv3_resnet101": _deeplab_builder("deeplabv3_resnet101"),
    "deeplabv3_mobilenet_v3_large": _deeplab_builder("deeplabv3_mobilenet_v3_large"),
    "deeplabv2_resnet101": build_deeplabv2,
}

# Models whose batch norm learns from batch statistics: torchvision's DeepLabV3 pooling branch
# normalises one value per channel and image, so a training pass needs at least 2 images
# (the selector's target-only MCD step included). Others train at batch size 1.
MIN_BATCH_SIZE = {"deeplabv3_resnet101": 2, "deeplabv3_mobilenet_v3_large": 2}


def build_model(
    name: str, num_classes: int, width: int, num_heads: int = 1, pretrained: str = "", deeplabv2_style: str = "ripu"
) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, width, num_heads, pretrained, deeplabv2_style=deeplabv2_style)


# --- starting checkpoints -------------------------------------------------------------------------


class StartCheckpointError(ValueError):
    """A model file that cannot start the configured model; the message names the file and the first bad key."""


# How the keys of known checkpoint layouts map onto this project's (regex on the whole key -> replacement;
# ``None`` drops the key). Applied in order, first match wins, after wrappers ("module.", "Scale.") are
# stripped. Documented in docs/protocol.md.
START_KEY_MAPPING: dict[str, list[tuple[str, str | None]]] = {
    "deeplabv2_resnet101": [
        (r"^(conv1|bn1|layer[1-4])\.(.*)$", r"backbone.\1.\2"),  # AdaptSegNet, torchvision ImageNet
        (r"^layer6\.(.*)$", r"heads.0.\1"),  # AdaptSegNet multi: the layer4 classifier
        (r"^layer5\.(.*)$", r"heads.0.\1"),  # AdaptSegNet single-level (dropped if layer6)
        (r"^feature_extractor\.backbone\.(.*)$", r"backbone.\1"),  # RIPU
        (r"^classifier\.(.*)$", r"heads.0.\1"),  # RIPU
        (r"^fc\..*$", None),  # ImageNet classification layer
    ],
    "deeplabv3_resnet101": [
        (r"^classifier\.4\.(.*)$", r"heads.0.\1"),  # torchvision DeepLabV3
        (r"^classifier\.([0-3])\.(.*)$", r"neck.\1.\2"),
        (r"^aux_classifier\..*$", None),
    ],
    "deeplabv3_mobilenet_v3_large": [
        (r"^classifier\.4\.(.*)$", r"heads.0.\1"),
        (r"^classifier\.([0-3])\.(.*)$", r"neck.\1.\2"),
        (r"^aux_classifier\..*$", None),
    ],
}
_WRAPPER_PREFIXES = ("module.", "Scale.")  # DataParallel / DDP saves; DeepLab's Caffe conversion


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a model file: a plain state dict, or one nested under 'state_dict' / 'model', or
    RIPU's {'feature_extractor': ..., 'classifier': ...}; flattened to 'name.key' -> tensor."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StartCheckpointError(f"model file '{path}' does not exist") from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise StartCheckpointError(f"model file '{path}' is unreadable as a state dict: {type(err).__name__}") from None
    if isinstance(raw, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    flat: dict[str, torch.Tensor] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, torch.Tensor):
                flat[f"{prefix}{key}"] = value
            elif isinstance(value, dict) and prefix == "" and key in ("feature_extractor", "classifier"):
                walk(value, f"{key}.")

    if not isinstance(raw, dict):
        raise StartCheckpointError(f"model file '{path}' holds a {type(raw).__name__}, not a state dict")
    walk(raw, "")
    if not flat:
        raise StartCheckpointError(f"model file '{path}' holds no tensors")
    return flat


def map_start_keys(state: dict[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """``state``'s keys renamed into this project's layout for ``model_name`` (see ``START_KEY_MAPPING``).

    Batch-norm step counters are dropped (frozen or not, nothing reads them back); so is
    AdaptSegNet's auxiliary layer3 classifier (``layer5`` beside ``layer6``), which the papers'
    single-output evaluation does not use.
    """

    def unwrap(key: str) -> str:
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        return key

    state = {unwrap(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    rules = START_KEY_MAPPING.get(model_name, [])
    has_layer6 = any(k.startswith("layer6.") for k in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if has_layer6 and key.startswith("layer5."):
            continue
        new_key: str | None = key
        for pattern, replacement in rules:
            if re.match(pattern, key):
                new_key = None if replacement is None else re.sub(pattern, replacement, key)
                break
        if new_key is not None:
            out[new_key] = value
    return out


def load_start_checkpoint(
    model: nn.Module, path: str | Path, model_name: str, include_heads: bool = True, what: str = "start checkpoint"
) -> None:
    """Load a model file into ``model`` (all keys must fit), or raise ``StartCheckpointError`` naming
    the first key that does not: missing, of another shape, or one the model does not have.

    ``include_heads=False`` loads everything but the pixel classifiers (the selector network S's backbone, or
    ImageNet weights, which carry no segmentation classifier); the heads keep their own weights.
    """
    fit_start_state(model, read_state_dict(path), model_name, include_heads, f"{what} '{path}'")


def fit_start_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    model_name: str,
    include_heads: bool = True,
    source: str = "start checkpoint",
) -> None:
    """``load_start_checkpoint`` on tensors already read (``source`` names them in errors)."""
    mapped = map_start_keys(state, model_name)
    own = model.state_dict()

    def wanted(key: str) -> bool:
        return include_heads or not key.startswith("heads.")

    for key, tensor in own.items():
        if not wanted(key):
            continue
        if key not in mapped:
            raise StartCheckpointError(f"{source} does not fit model '{model_name}': it has no '{key}'")
        if tuple(mapped[key].shape) != tuple(tensor.shape):
            raise StartCheckpointError(
                f"{source} does not fit model '{model_name}': '{key}' is "
                f"{tuple(mapped[key].shape)} there, the model needs {tuple(tensor.shape)}"
            )
    extra = [k for k in mapped if k not in own and wanted(k)]
    if extra:
        raise StartCheckpointError(f"{source} does not fit model '{model_name}': the model has no '{extra[0]}'")
    model.load_state_dict({k: v for k, v in mapped.items() if wanted(k)}, strict=False)
