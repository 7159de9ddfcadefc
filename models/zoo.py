"""Small torch models, in plain torch, that cover the graph patterns a channel partitioner meets.

Each model is tiny so that export and a forward pass stay fast in tests; only ``resnet50`` is a
full-size topology. Normalisation statistics and affine parameters are randomised after
construction: with the default BatchNorm init (weight 1, bias 0, mean 0, var 1) a zeroed channel
stays zero through BN, which hides bugs in tests that zero channels and compare outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "ZooEntry", "build", "light_names", "randomize_norms"]


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: how to build it (``build(seed)``) and the input it expects (batch 1)."""

    name: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, ...]
    heavy: bool = False


class LayerScale(nn.Module):
    """Learnable per-channel scale on the last axis (ConvNeXt / CaiT "layer scale")."""

    def __init__(self, dim: int, init: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm, LayerNorm, GroupNorm and LayerScale non-trivial parameters, from
    torch's RNG.

    Why: default init (scale 1, shift 0) maps zero to zero, so zeroing tests would pass even
    when a group misses its norm members.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_().mul_(0.1)
                m.running_mean.normal_().mul_(0.1)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, nn.LayerNorm | nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_().mul_(0.1)
            elif isinstance(m, LayerScale):
                m.gamma.uniform_(0.5, 1.5)
    return model


def _conv_bn(
    c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


# --------------------------------------------------------------------------- DemoNet (OTOv2)


class DemoNet(nn.Module):
    """OTOv2's DemoNet (tutorials/backends/demonet.py at 343341c) on 3 x 32 x 32 input: one conv
    feeding two BNs, a three-way sum, a concat, two stacked Gemms. Its only nonlinearity is the
    ReLU after bn1 (as theirs: bn4, conv5, the pool and both Gemms are one linear map), which
    is why pruning after it costs little. Our layer names drop their underscores (bn_1 -> bn1).

    ``widths`` = output channels of conv1, conv2/conv3 (they are summed), conv5 and gemm1; the
    paper's are the default. Other widths build a given slim architecture to train from scratch.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 128)) -> None:
        super().__init__()
        c1, c2, c5, g1 = widths
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.bn3 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(c1 + c2)
        self.conv5 = nn.Conv2d(c1 + c2, c5, 3, padding=1)
        self.gemm1 = nn.Linear(c5, g1)
        self.gemm2 = nn.Linear(g1, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x1)
        s = self.bn2(y) + self.bn3(y) + self.conv3(x1)
        x = self.bn4(torch.cat([x1, s], dim=1))
        x = F.adaptive_avg_pool2d(self.conv5(x), 1)
        return self.gemm2(self.gemm1(torch.flatten(x, 1)))


# --------------------------------------------------------------------------- MLP / VGG


def _mlpnet() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 40),
        nn.ReLU(),
        nn.Linear(40, 20),
        nn.ReLU(),
        nn.Linear(20, 10),
    )


class VGGBN(nn.Module):
    """VGG with BN whose classifier reads a flattened C x H x W map (channel -> H*W features)."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [*_conv_bn(c_in, w), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = w
        self.features = nn.Sequential(*layers)
        spatial = 32 // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * spatial * spatial, 64),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# --------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus identity or 1x1 stride-s downsample, then relu."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, c_out)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, plus identity or downsample."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, c_out, 1)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.downsample(x))


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class ResNet(nn.Module):
    """ResNet of ``block`` with ``layers[i]`` blocks of width ``widths[i]`` per stage.

    ``large_stem`` gives the ImageNet stem (7x7 stride 2 + max pool); otherwise a 3x3 stride-1 stem.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        stem_width: int,
        num_classes: int,
        *,
        large_stem: bool = False,
    ) -> None:
        super().__init__()
        k = 7 if large_stem else 3
        self.conv1 = nn.Conv2d(3, stem_width, k, 2 if large_stem else 1, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if large_stem else nn.Identity()
        c_in = stem_width
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, w, 2 if (i > 0 and j == 0) else 1))
                c_in = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = F.adaptive_avg_pool2d(self.layers(x), 1)
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3; its output is concatenated to its input."""

    def __init__(self, c_in: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], dim=1)


class DenseNet(nn.Module):
    """Stem, dense block, transition (BN-ReLU-1x1-avgpool), dense block, BN-ReLU, pool, Linear."""

    def __init__(self, stem: int = 16, growth: int = 8, blocks: tuple[int, ...] = (3, 2)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        c = stem
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                stages += [
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                    nn.Conv2d(c, c // 2, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                c //= 2
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.features(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when t == 1), depthwise 3x3, project 1x1; residual if shape allows."""

    def __init__(self, c_in: int, c_out: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = c_in * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, c_out, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """Stem, inverted residual blocks (t=1, stride 2, residual adds), 1x1 head conv, Linear."""

    # (expansion t, out channels, stride)
    SETTINGS = ((1, 8, 1), (4, 16, 2), (4, 16, 1), (4, 24, 2), (4, 24, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 16, 3, 2), nn.ReLU6()]
        c = 16
        for t, c_out, s in self.SETTINGS:
            layers.append(InvertedResidual(c, c_out, s, t))
            c = c_out
        layers += [*_conv_bn(c, 64, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- SE net


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(relu(reduce(avgpool(x))))): a channel gate whose zero point is 0.5."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c // reduction, 1)
        self.expand = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.adaptive_avg_pool2d(x, 1)
        g = torch.sigmoid(self.expand(F.relu(self.reduce(g))))
        return x * g


class SENet(nn.Module):
    """conv-bn-relu, pool, conv-bn-relu, SE gate, conv-bn-relu, pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 16)
        self.conv2, self.bn2 = _conv_bn(16, 32)
        self.se = SqueezeExcite(32)
        self.conv3, self.bn3 = _conv_bn(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.se(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- ConvNeXt


class ConvNeXtBlock(nn.Module):
    """dw7x7 -> channels-last LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale -> +x."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.ls = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.ls(self.pwconv2(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem (4x4 stride 4), ConvNeXt blocks, global mean, LayerNorm, Linear head."""

    def __init__(self, dim: int = 32, depth: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.norm(x))


# --------------------------------------------------------------------------- stacked U-Nets


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(c_in, c_out), nn.ReLU(), *_conv_bn(c_out, c_out), nn.ReLU())


class UNet(nn.Module):
    """Two-level U-Net: max-pool down, ConvTranspose (k2 s2) up, concat skips, 1x1 out conv."""

    def __init__(self, c_in: int, c_out: int, widths: tuple[int, int] = (8, 16)) -> None:
        super().__init__()
        w1, w2 = widths
        self.enc1 = _double_conv(c_in, w1)
        self.enc2 = _double_conv(w1, w2)
        self.mid = _double_conv(w2, 2 * w2)
        self.up2 = nn.ConvTranspose2d(2 * w2, w2, 2, stride=2)
        self.dec2 = _double_conv(2 * w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _double_conv(2 * w1, w1)
        self.out = nn.Conv2d(w1, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


class StackedUNets(nn.Module):
    """Two U-Nets in series: the first one's 1x1 output conv is a channel space the second reads."""

    def __init__(self) -> None:
        super().__init__()
        self.unet1 = UNet(1, 4)
        self.unet2 = UNet(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet2(self.unet1(x))


# --------------------------------------------------------------------------- CARN


class ResidualBlock(nn.Module):
    """conv-relu-conv + identity, relu."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class CARN(nn.Module):
    """CARN super-resolution x2: cascading residual blocks whose outputs are concatenated and
    fused by 1x1 convs, then conv C -> 4C + PixelShuffle(2) (DepthToSpace) and a 3-channel conv."""

    def __init__(self, c: int = 16, n_blocks: int = 3) -> None:
        super().__init__()
        self.entry = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(c) for _ in range(n_blocks))
        self.fuse = nn.ModuleList(nn.Conv2d(c * (i + 2), c, 1) for i in range(n_blocks))
        self.upsample = nn.Conv2d(c, 4 * c, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.exit = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        cascade = x
        for block, fuse in zip(self.blocks, self.fuse, strict=True):
            cascade = torch.cat([cascade, block(x)], dim=1)
            x = F.relu(fuse(cascade))
        x = F.relu(self.shuffle(self.upsample(x)))
        return self.exit(x)


# --------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention with explicit q, k, v, out Linears (one head = one group).

    Reshape targets are Python ints (batch -1) so the exported Reshape shapes are constants,
    not Shape -> Gather subgraphs. ``sdpa`` computes the products with torch's
    scaled_dot_product_attention (as HF models do) instead of spelling them out; ``fused``
    makes q, k, v with one Linear reshaped to (3, heads, head_dim), as timm's ViTs do.
    """

    def __init__(self, dim: int, heads: int, tokens: int, *, sdpa: bool = False,
                 fused: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens, self.sdpa = heads, dim // heads, tokens, sdpa
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = self.head_dim**-0.5

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not hasattr(self, "qkv"):
            return self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        qkv = self.qkv(x).reshape(-1, self.tokens, 3, self.heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.scale
            y = torch.softmax(scores if mask is None else scores + mask, dim=-1) @ v
        y = y.transpose(1, 2).reshape(-1, self.tokens, self.heads * self.head_dim)
        return self.out(y)


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)); x + mlp(LN(x)) with a Linear-GELU-Linear MLP (hidden
    width ``mlp_ratio * dim``; ViT and DeiT use 4, the default)."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_ratio: int = 4, *,
                 fused: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens, fused=fused)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch-4 conv embedding + position embedding, pre-LN blocks, LN, token mean, Linear head."""

    def __init__(
        self, image: int = 16, patch: int = 4, dim: int = 32, heads: int = 4, depth: int = 2
    ) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, tokens) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


# --------------------------------------------------------------------------- grouped conv


class GroupedBottleneck(Bottleneck):
    """1x1 reduce, grouped 3x3 (carries the stride), 1x1 expand, plus identity or downsample:
    ResNeXt's block (fixed cardinality) and RegNetX's (fixed group width). Bottleneck's forward;
    only the 3x3 is grouped and the output width is free."""

    def __init__(self, c_in: int, width: int, c_out: int, groups: int, stride: int = 1) -> None:
        nn.Module.__init__(self)
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride, groups=groups)
        self.conv3, self.bn3 = _conv_bn(width, c_out, 1)
        self.downsample = _downsample(c_in, c_out, stride)


class GroupedNet(nn.Module):
    """Stem, stages of ``GroupedBottleneck`` (stage i: ``depths[i]`` blocks, bottleneck width
    ``widths[i]`` in ``widths[i] // group_width`` conv groups, ``outs[i]`` output channels),
    global pool, Linear."""

    def __init__(self, widths: tuple[int, ...], outs: tuple[int, ...], depths: tuple[int, ...],
                 group_width: int, stem: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, stem, 3), nn.ReLU()]
        c = stem
        for i, (w, c_out, n) in enumerate(zip(widths, outs, depths, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(GroupedBottleneck(c, w, c_out, w // group_width, stride))
                c = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


def _resnext() -> nn.Module:
    """ResNeXt pattern: cardinality 8 in every stage (32x4d scaled down to 8x2d, 8x4d)."""
    return GroupedNet(widths=(16, 32), outs=(32, 64), depths=(2, 1), group_width=2)


def _regnet() -> nn.Module:
    """RegNetX pattern: a fixed group width of 4, the number of conv groups grows per stage."""
    return GroupedNet(widths=(16, 32, 48), outs=(16, 32, 48), depths=(1, 2, 1), group_width=4)


# --------------------------------------------------------------------------- ResNeSt


class SplitAttention(nn.Module):
    """ResNeSt's split-attention conv (timm ``SplitAttn``): a 3x3 conv in radix x cardinality
    conv groups makes radix x C channels; their sum over radix is pooled, fc1 (BN, ReLU) and fc2
    (both in cardinality conv groups) give radix x C logits; rSoftMax (view as card x radix,
    softmax over radix) weighs each radix slice, and the weighted slices are summed."""

    def __init__(self, c_in: int, c: int, radix: int, card: int) -> None:
        super().__init__()
        self.radix, self.card = radix, card
        attn = max(c * radix // 4, 16) // card * card  # timm: 1/4, at least 32
        self.conv, self.bn0 = _conv_bn(c_in, c * radix, 3, groups=card * radix)
        self.fc1 = nn.Conv2d(c, attn, 1, groups=card)
        self.bn1 = nn.BatchNorm2d(attn)
        self.fc2 = nn.Conv2d(attn, c * radix, 1, groups=card)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape(b, self.radix, rc // self.radix, h, w)
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(F.relu(self.bn1(self.fc1(gap))))
        attn = attn.view(b, self.card, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        return (x * attn.reshape(b, self.radix, rc // self.radix, 1, 1)).sum(dim=1)


class ResNeStBottleneck(nn.Module):
    """1x1 reduce, split-attention 3x3, 3x3 average pool when strided (ResNeSt-d's avd), 1x1
    expand, plus identity or a 1x1 downsample."""

    def __init__(self, c_in: int, width: int, c_out: int, radix: int, card: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.attn = SplitAttention(width, width, radix, card)
        self.avd = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = _conv_bn(width, c_out, 1)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avd(self.attn(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(self.bn3(self.conv3(y)) + self.downsample(x))


class ResNeSt(nn.Module):
    """Stem, a radix-2 cardinality-1 block (ResNeSt-50's) and a strided radix-4 cardinality-2
    block (ResNeSt 4s2x's), global pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16), nn.ReLU())
        self.blocks = nn.Sequential(ResNeStBottleneck(16, 16, 32, radix=2, card=1),
                                    ResNeStBottleneck(32, 32, 48, radix=4, card=2, stride=2))
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- MobileViT


class MobileViTBlock(nn.Module):
    """MobileViT's block (timm ``MobileVitBlock``): local 3x3 conv, 1x1 to d, unfold into
    patch_area sequences of tokens by Reshape/Transpose, pre-LN transformer blocks (fused qkv,
    MLP ratio 2) and a LayerNorm, fold back, 1x1 to C, concatenate with the block input, 3x3
    fusion conv."""

    def __init__(self, c: int, d: int, heads: int, size: int, patch: int = 2,
                 depth: int = 1) -> None:
        super().__init__()
        self.patch = patch
        tokens = (size // patch) ** 2
        self.conv_kxk = nn.Sequential(*_conv_bn(c, c, 3), nn.SiLU())
        self.conv_1x1 = nn.Conv2d(c, d, 1, bias=False)
        self.transformer = nn.Sequential(*[TransformerBlock(d, heads, tokens, mlp_ratio=2,
                                                            fused=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.conv_proj = nn.Sequential(*_conv_bn(d, c, 1), nn.SiLU())
        self.conv_fusion = nn.Sequential(*_conv_bn(2 * c, c, 3), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        b, c, h, w = x.shape
        p = self.patch
        nh, nw = h // p, w // p
        x = x.reshape(b * c * nh, p, nw, p).transpose(1, 2)
        x = x.reshape(b, c, nh * nw, p * p).transpose(1, 3).reshape(b * p * p, nh * nw, -1)
        x = self.norm(self.transformer(x))
        x = x.contiguous().view(b, p * p, nh * nw, -1)
        x = x.transpose(1, 3).reshape(b * c * nh, nw, p, p)
        x = x.transpose(1, 2).reshape(b, c, nh * p, nw * p)
        return self.conv_fusion(torch.cat((shortcut, self.conv_proj(x)), dim=1))


class MobileViT(nn.Module):
    """Strided stem, an inverted residual, a MobileViT block on 8x8 (2x2 patches, 16 tokens),
    1x1 head conv, pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3, 2), nn.SiLU())
        self.mv2 = InvertedResidual(16, 24, 1, 2)
        self.vit = MobileViTBlock(24, 32, heads=4, size=8)
        self.head = nn.Sequential(*_conv_bn(24, 64, 1), nn.SiLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.vit(self.mv2(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- GhostNet


class GhostModule(nn.Module):
    """GhostNet's module: a primary 1x1 conv makes ceil(c_out / ratio) channels, a cheap
    depthwise 3x3 makes (ratio - 1) more from each, the two are concatenated and sliced to
    c_out."""

    def __init__(self, c_in: int, c_out: int, ratio: int = 2, relu: bool = True) -> None:
        super().__init__()
        self.c_out = c_out
        init = -(-c_out // ratio)
        act: list[nn.Module] = [nn.ReLU()] if relu else []
        self.primary = nn.Sequential(*_conv_bn(c_in, init, 1), *act)
        self.cheap = nn.Sequential(*_conv_bn(init, init * (ratio - 1), 3, groups=init), *act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.c_out]


class GhostBottleneck(nn.Module):
    """Ghost module (expand), optional stride-2 depthwise, ghost module (project, no ReLU),
    plus identity or a depthwise + 1x1 shortcut."""

    def __init__(self, c_in: int, hidden: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.ghost1 = GhostModule(c_in, hidden)
        self.dw = nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, groups=hidden)) \
            if stride > 1 else nn.Identity()
        self.ghost2 = GhostModule(hidden, c_out, relu=False)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(*_conv_bn(c_in, c_in, 3, stride, groups=c_in),
                                          *_conv_bn(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.dw(self.ghost1(x))) + self.shortcut(x)


class GhostNet(nn.Module):
    """Stem, ghost bottlenecks, a last ghost module whose slice cuts (4 primary + 8 cheap
    channels at ratio 3, sliced to 10), 1x1 head, pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3, 2), nn.ReLU())
        self.blocks = nn.Sequential(
            GhostBottleneck(16, 24, 16),
            GhostBottleneck(16, 48, 24, stride=2),
            GhostBottleneck(24, 36, 24),
            GhostModule(24, 10, ratio=3, relu=False),
        )
        self.head = nn.Sequential(*_conv_bn(10, 64, 1), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1)
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- GroupNorm


class GroupNormNet(nn.Module):
    """conv-GN-ReLU stages with residual blocks, the norm of detection and small-batch nets."""

    def __init__(self, widths: tuple[int, int] = (16, 32), groups: int = 4) -> None:
        super().__init__()
        w1, w2 = widths
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1), nn.GroupNorm(groups, w1),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(w1, w1, 3, padding=1), nn.GroupNorm(groups, w1),
                                   nn.ReLU(), nn.Conv2d(w1, w1, 3, padding=1),
                                   nn.GroupNorm(groups, w1))
        self.down = nn.Sequential(nn.Conv2d(w1, w2, 3, 2, 1), nn.GroupNorm(groups, w2),
                                  nn.ReLU())
        self.fc = nn.Linear(w2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.down(F.relu(x + self.block(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- BERT


class BertLayer(nn.Module):
    """Post-LN encoder layer: LN(x + attn(x, mask)), LN(x + ffn(x))."""

    def __init__(self, dim: int, heads: int, tokens: int, hidden: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, tokens, sdpa=True)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class TinyBert(nn.Module):
    """BERT-style encoder: token + position embeddings (Gather), an additive padding mask
    over the scores, post-LN layers with scaled_dot_product_attention, a pooler (Linear + Tanh
    on the first token), a classifier.

    The zoo feeds one float tensor, so the token ids come from it in the graph: the number of
    ``boundaries`` each value exceeds (id 0 is padding, and masked out of attention). The mask
    adds -30, not BERT's -1e4: a padded token still weighs e^-30 ~ 1e-13, and unlike e^-1e4
    that is not 0 in float32, so the mask constant, bound as a parameter, keeps a gradient.
    """

    def __init__(self, vocab: int = 12, tokens: int = 8, dim: int = 24, heads: int = 3,
                 depth: int = 2, hidden: int = 48) -> None:
        super().__init__()
        self.register_buffer("boundaries", torch.linspace(-1.5, 1.5, vocab - 1))
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(BertLayer(dim, heads, tokens, hidden) for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x.unsqueeze(-1) > self.boundaries).sum(-1)
        mask = (ids == 0).to(x.dtype)[:, None, None, :] * -30.0
        h = self.norm(self.tokens(ids) + self.positions)
        for layer in self.layers:
            h = layer(h, mask)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


# --------------------------------------------------------------------------- If subgraph


def _doubled(t: torch.Tensor) -> torch.Tensor:
    return t * 2.0


def _negated(t: torch.Tensor) -> torch.Tensor:
    return -t


@torch.jit.script
def _scripted_branch(t: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    if bool(flag):
        return t * 2.0
    return -t


class IfNet(nn.Module):
    """Two conv-BN-ReLU, a data-dependent branch on the second's channels (doubled if the
    input's mean is positive, else negated), conv-BN-ReLU, pool, Linear.

    The branch is an ONNX ``If`` whose bodies read the second conv's channels from the outer
    scope, so those channels must stay whole while the others remain prunable. The dynamo
    exporter records ``torch.cond``; the legacy tracer records a scripted ``if`` (it cannot
    trace ``torch.cond``, and torch.export cannot read a scripted function), hence the switch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 8)
        self.conv2, self.bn2 = _conv_bn(8, 16)
        self.conv3, self.bn3 = _conv_bn(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        flag = x.mean() > 0
        if torch.compiler.is_compiling():
            h = torch.cond(flag, _doubled, _negated, (h,))
        else:
            h = _scripted_branch(h, flag)
        h = F.relu(self.bn3(self.conv3(h)))
        return self.fc(h.mean((2, 3)))


# --------------------------------------------------------------------------- registry


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """Wrap a factory so that ``build(seed)`` is deterministic and leaves torch's RNG untouched."""

    def build_seeded(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = randomize_norms(factory())
        return model.eval()

    return build_seeded


def _entry(name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], **kw) -> ZooEntry:
    return ZooEntry(name, _seeded(factory), shape, **kw)


_ENTRIES = [
    _entry("demonet", DemoNet, (1, 3, 32, 32)),
    _entry("mlpnet", _mlpnet, (1, 1, 28, 28)),
    _entry("vgg_bn", VGGBN, (1, 3, 32, 32)),
    _entry("resnet_basic", lambda: ResNet(BasicBlock, (2, 2), (8, 16), 8, 10), (1, 3, 32, 32)),
    _entry(
        "resnet_bottleneck",
        lambda: ResNet(Bottleneck, (2, 2), (8, 16), 16, 10),
        (1, 3, 32, 32),
    ),
    _entry(
        "resnet50",
        lambda: ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64, 1000, large_stem=True),
        (1, 3, 64, 64),
        heavy=True,
    ),
    _entry("densenet", DenseNet, (1, 3, 32, 32)),
    _entry("mobilenetv2", MobileNetV2, (1, 3, 32, 32)),
    _entry("se_net", SENet, (1, 3, 32, 32)),
    _entry("convnext", ConvNeXt, (1, 3, 32, 32)),
    _entry("stacked_unets", StackedUNets, (1, 1, 32, 32)),
    _entry("carn", CARN, (1, 3, 16, 16)),
    _entry("vit", ViT, (1, 3, 16, 16)),
    _entry("resnext", _resnext, (1, 3, 16, 16)),
    _entry("regnet", _regnet, (1, 3, 16, 16)),
    _entry("ghostnet", GhostNet, (1, 3, 16, 16)),
    _entry("groupnorm_net", GroupNormNet, (1, 3, 16, 16)),
    _entry("bert", TinyBert, (1, 8)),
    _entry("ifnet", IfNet, (1, 3, 16, 16)),
    _entry("resnest", ResNeSt, (1, 3, 16, 16)),
    _entry("mobilevit", MobileViT, (1, 3, 16, 16)),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def build(name: str, seed: int = 0) -> nn.Module:
    """Build zoo model ``name`` in eval mode; the same seed gives the same weights.

    Defaults to seed 0. Raises KeyError naming the known models for an unknown name.
    """
    try:
        entry = ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None
    return entry.build(seed)


def light_names() -> list[str]:
    """Names of the models cheap enough for per-model test loops (all but the heavy ones)."""
    return [name for name, e in ZOO.items() if not e.heavy]
