"""Model architectures, registered by name, and the classifier that applies a card to them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.errors import ModelError

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(
    name: str,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model constructor under ``name`` (a card's ``architecture``)."""

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHITECTURES:
            raise ValueError(f"Architecture {name!r} is already registered")
        ARCHITECTURES[name] = constructor
        return constructor

    return decorator


class SeparableConv2d(nn.Sequential):
    """A depthwise 3×3 convolution followed by a pointwise 1×1 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1),
        )


def _conv_group(in_channels: int, widths: tuple[int, ...], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            SeparableConv2d(in_channels, width),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(width),
        ]
        in_channels = width
    layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
    return layers


@register_architecture("cancernet")
class CancerNet(nn.Module):
    """CancerNet (Rosebrock, PyImageSearch 2019) for 50×50 RGB patches.

    Depthwise-separable 3×3 convolutions in groups of (32), (64, 64), (128, 128, 128), each
    followed by ReLU and batch norm; max-pool and dropout after each group; a dense layer of
    256 (ReLU, batch norm, dropout 0.5); two logits (softmax is applied by the Predictor, with
    the card's temperature).
    """

    def __init__(
        self,
        input_size: int = 50,
        num_classes: int = 2,
        conv_dropout: float = 0.25,
        dense_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_group(3, (32,), conv_dropout),
            *_conv_group(32, (64, 64), conv_dropout),
            *_conv_group(64, (128, 128, 128), conv_dropout),
        )
        side = input_size // 2 // 2 // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(256),
            nn.Dropout(dense_dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


@register_architecture("resnet8")
class ResNet8(nn.Module):
    """A compact residual network for 50×50 patches, trained from scratch.

    A 3×3 stem (``widths[0]`` channels) at full resolution and a 2×2 max-pool (25×25), then
    one :class:`BasicBlock` per width, the second and third with stride 2 (13×13, 7×7);
    global average pooling, dropout and two logits. 8 weight layers, ≈0.3 M parameters,
    ≈35 M multiply-adds per patch (CancerNet: ≈11 M, 1.2 M parameters).
    """

    def __init__(
        self,
        num_classes: int = 2,
        widths: tuple[int, int, int] = (32, 64, 128),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_channels = widths[0]
        for index, width in enumerate(widths):
            layers.append(BasicBlock(in_channels, width, stride=1 if index == 0 else 2))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


#: Most parameters a network may have (the shipped ones have 0.3 M and 1.2 M): a card's
#: ``architecture_args`` are checked against it before any memory is allocated.
MAX_PARAMETERS = 50_000_000


def build_model(
    architecture: str,
    args: Mapping[str, Any] | None = None,
    *,
    input_size: int | None = None,
    classes: int | None = None,
) -> nn.Module:
    """Construct a registered architecture.

    It is first built on torch's ``meta`` device, which allocates nothing: arguments that
    make no network, or one of more than :data:`MAX_PARAMETERS` parameters (a card asking for
    absurd widths), are refused before any weight exists. With ``input_size`` and
    ``classes`` (a card's), one patch through the network checks that it takes patches of
    that size and gives one logit per class.

    Raises
    ------
    ModelError
        For an unknown architecture, bad or oversized arguments, or a network that does
        not fit the input size or classes.
    """
    try:
        constructor = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"Unknown architecture {architecture!r}; known: {known}") from None
    arguments = dict(args or {})
    try:
        with torch.device("meta"):
            probe = constructor(**arguments)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ModelError(f"Bad architecture_args for {architecture!r}: {exc}") from exc
    parameters = sum(parameter.numel() for parameter in probe.parameters())
    if parameters > MAX_PARAMETERS:
        raise ModelError(
            f"architecture_args {arguments} make a {architecture!r} network of {parameters:,} "
            f"parameters; at most {MAX_PARAMETERS:,} are allowed"
        )
    model = constructor(**arguments)
    if input_size is not None and classes is not None:
        # One patch through the real network (cheap, and its size is checked): a forward
        # pass on the meta device would cost seconds of torch's first-use set-up.
        training = model.training
        try:
            with torch.no_grad():
                shape = tuple(model.eval()(torch.zeros(1, 3, input_size, input_size)).shape)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(
                f"A {architecture!r} network with {arguments} does not take "
                f"{input_size} x {input_size} px patches: {str(exc).splitlines()[0]}"
            ) from exc
        model.train(training)
        if shape != (1, classes):
            raise ModelError(
                f"A {architecture!r} network with {arguments} gives {shape[1:]} outputs per "
                f"patch; the card lists {classes} classes"
            )
    return model


class PatchClassifier(nn.Module):
    """A network with its card applied: ``(N, H, W, 3) uint8`` patches in, P(IDC) out.

    Normalisation, calibration (temperature, then the card's ``logit_bias`` added to the
    positive class's logit: Platt scaling for two classes), softmax and the choice of the
    positive class live here, once, so the eager, CUDA and exported (ONNX) paths all compute
    the same function.
    """

    offset: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(self, model: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.model = model
        # (x / 255 - mean) / std  ==  (x - 255 mean) / (255 std)
        mean = torch.tensor(card.normalization_mean, dtype=torch.float32) * 255.0
        std = torch.tensor(card.normalization_std, dtype=torch.float32) * 255.0
        self.register_buffer("offset", mean.view(1, 3, 1, 1))
        self.register_buffer("scale", std.view(1, 3, 1, 1))
        self.temperature = float(card.temperature)
        self.positive_index = card.positive_index
        bias = torch.zeros(1, len(card.classes), dtype=torch.float32)
        bias[0, card.positive_index] = card.logit_bias
        self.register_buffer("bias", bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.permute(0, 3, 1, 2).float()
        x = (x - self.offset) / self.scale
        logits = self.model(x).float() / self.temperature + self.bias
        return torch.softmax(logits, dim=1)[:, self.positive_index]
