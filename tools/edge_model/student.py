"""The NNS2-class student: a tiny Inception-style face embedder, and a MAC counter for it.

Layout of ``StudentConfig()`` (``width=1.0``, 112x112 input, 37.0M multiply-adds
per face by :func:`count_macs`; :func:`describe_architecture` prints these lines
for any config, and the shipped models/student-int8 is this one):

    stem   3x3/2 conv 3->16, depthwise 3x3, 1x1 16->32            56x56
    stage  reduction Inception 32->64, 2 x Inception-ResNet 64     28x28
    stage  reduction Inception 64->128, 3 x Inception-ResNet 128   14x14
    stage  reduction Inception 128->224, 2 x Inception-ResNet 224  7x7
    head   1x1 224->512, global depthwise 7x7 (GDC), linear 512->128, BatchNorm

A stride-1 Inception block runs four parallel branches - 1x1; 1x1 -> depthwise
3x3; 1x1 -> depthwise 3x3 -> depthwise 3x3 (the "double 3x3"); 3x3 max-pool ->
1x1 - whose widths add up to the block's output and are concatenated (no merge
convolution); with equal input and output widths it adds its input back
(Inception-ResNet).  A reduction (stride-2) block drops the plain 1x1 branch and
runs its depthwise 3x3 at stride 2 before the 1x1s.  Only
Conv/BatchNorm/ReLU6/Pad/MaxPool/Add/Concat, which fold and quantise cleanly to
full-INT8 TFLite.  :func:`fold_batchnorm` returns an equivalent network without
BatchNorm for export.

The 128-D output is the pre-normalisation embedding; like the SFace bundle the
runtime (:class:`edge.embedder.TFLiteEmbedder`) L2-normalises it.  Training and
:meth:`Student.embed` normalise in float.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def _c(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


class InceptionBlock(nn.Module):
    """Parallel 1x1 / 1x1->dw3x3 / 1x1->dw3x3->dw3x3 / maxpool->1x1 branches, concatenated.

    The branch widths add up to ``cout`` (GoogLeNet-style, no merge convolution),
    and a stride-1 block with ``cin == cout`` adds its input back (Inception-ResNet).
    A stride-2 (reduction) block drops the plain 1x1 branch, as Inception's do.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        q = cout // 4
        if stride == 1:
            widths = (q, q, q, cout - 3 * q)
        else:
            w3 = _c(cout * 3 / 8)
            widths = (0, w3, q, cout - w3 - q)
        b1, b3, b5, bp = widths
        self.b1 = conv_bn(cin, b1, 1) if b1 else None
        if stride == 1:
            self.b3 = nn.Sequential(conv_bn(cin, b3, 1), conv_bn(b3, b3, 3, 1, groups=b3))
            self.b5 = nn.Sequential(
                conv_bn(cin, b5, 1), conv_bn(b5, b5, 3, 1, groups=b5), conv_bn(b5, b5, 3, 1, groups=b5)
            )
        else:  # reduce first (depthwise, strided), then widen: the 1x1s run at the output resolution
            self.b3 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, b3, 1))
            self.b5 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, b5, 1), conv_bn(b5, b5, 3, 1, groups=b5)
            )
        # Every block input is >= 0 (ReLU6 outputs and sums of them), so zero padding is
        # exact here and exports as PAD + VALID MAX_POOL: a -inf padded max-pool becomes an
        # int8 PADV2 that XNNPACK fails to prepare.
        self.pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, stride, 0))
        self.bp = conv_bn(cin, bp, 1)
        self.residual = stride == 1 and cin == cout
        # Where TFLite stores the concatenation and the sum as int8 (QAT puts its rounding here).
        self.merge = nn.Identity()
        self.output = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b3(x), self.b5(x), self.bp(self.pool(x))]
        if self.b1 is not None:
            branches.insert(0, self.b1(x))
        y = self.merge(torch.cat(branches, 1))
        return self.output(x + y) if self.residual else y


READOUTS = ("gdc", "fc")


@dataclass
class StudentConfig:
    input_size: int = 112
    embedding_size: int = 128
    width: float = 1.0
    stem: int = 16
    stem_out: int = 32
    # (out channels, blocks at this resolution after the reduction)
    stages: list[tuple[int, int]] = field(default_factory=lambda: [(64, 2), (128, 3), (224, 2)])
    head: int = 512
    # "gdc": a global depthwise conv then a linear layer (MobileFaceNet); "fc": one linear layer over the
    # whole last map, every position its own weights (ArcFace's "E" output). At 7x7 a parameter of the fc
    # readout costs one multiply-add, so it is where a student buys parameters cheaply.
    readout: str = "gdc"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, not {self.readout!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StudentConfig":
        data = dict(data)
        data["stages"] = [tuple(s) for s in data.get("stages", [])] or cls().stages
        return cls(**data)

    def layout(self) -> dict:
        """The channel counts (rounded by ``width``) and square resolutions the network is built with:
        ``stem``, ``stem_out`` and ``stem_side``; ``stages`` as (channels, blocks, side); ``head``."""
        w = self.width
        side = (self.input_size + 1) // 2
        out = {"stem": _c(self.stem * w), "stem_out": _c(self.stem_out * w), "stem_side": side, "stages": []}
        for cout, repeats in self.stages:
            side = (side + 1) // 2
            out["stages"].append((_c(cout * w), repeats, side))
        out["head"] = _c(self.head * w)
        return out


class Student(nn.Module):
    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or StudentConfig()
        plan = config.layout()
        stem, stem_out = plan["stem"], plan["stem_out"]
        self.stem = nn.Sequential(
            conv_bn(3, stem, 3, 2), conv_bn(stem, stem, 3, 1, groups=stem), conv_bn(stem, stem_out, 1)
        )
        blocks: list[nn.Module] = []
        cin, side = stem_out, plan["stem_side"]
        for cout, repeats, side in plan["stages"]:
            blocks.append(InceptionBlock(cin, cout, stride=2))
            for _ in range(repeats):
                blocks.append(InceptionBlock(cout, cout, stride=1))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        head = plan["head"]
        self.head = conv_bn(cin, head, 1)
        if config.readout == "gdc":
            self.gdc = conv_bn(head, head, side, 1, groups=head, act=False)
            self.gdc[0].padding = (0, 0)
            self.fc = nn.Linear(head, config.embedding_size, bias=False)
        else:
            self.gdc = None
            self.fc = nn.Linear(head * side * side, config.embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(config.embedding_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float, already normalised -> (N, D) raw embedding."""
        x = self.head(self.blocks(self.stem(x)))
        if self.gdc is not None:
            x = self.gdc(x)
        return self.bn(self.fc(torch.flatten(x, 1)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=1)


def describe_architecture(config: StudentConfig) -> list[str]:
    """One line per part of the network, with the channel counts and resolutions it really builds."""
    plan = config.layout()
    stem, stem_out, side = plan["stem"], plan["stem_out"], plan["stem_side"]
    lines = [f"stem: 3x3/2 conv 3->{stem}, depthwise 3x3, 1x1 {stem}->{stem_out} ({side}x{side})"]
    cin = stem_out
    for cout, repeats, side in plan["stages"]:
        lines.append(f"reduction Inception {cin}->{cout} ({side}x{side}), {repeats} Inception-ResNet block"
                     f"{'' if repeats == 1 else 's'} of {cout}")
        cin = cout
    head = plan["head"]
    if config.readout == "gdc":
        lines.append(f"head: 1x1 {cin}->{head}, global depthwise {side}x{side} (GDC), linear {head}->"
                     f"{config.embedding_size} (+ folded BatchNorm)")
    else:
        lines.append(f"head: 1x1 {cin}->{head}, linear readout of the whole {side}x{side}x{head} map ->"
                     f"{config.embedding_size} (+ folded BatchNorm)")
    return lines


# Input normalisation of the student (and its manifest): RGB, (pixel - 127.5) / 128.
INPUT_MEAN = 127.5
INPUT_STD = 128.0


def count_macs(model: nn.Module, input_size: int | tuple[int, int] = 112) -> dict:
    """Multiply-adds of one forward pass on a single face, counted with forward hooks.

    Conv2d: out_h * out_w * out_c * (in_c / groups) * k_h * k_w; Linear: in * out.
    BatchNorm, activations, pooling and additions are not counted (they fold away or
    are negligible), as is usual for published MAC figures.  Returns
    ``{"macs": total, "params": n, "layers": [(name, macs), ...]}``.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    layers: list[tuple[str, int]] = []
    hooks = []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = output.shape[2] * output.shape[3] * module.out_channels * (module.in_channels // module.groups) * kh * kw
            else:
                macs = module.in_features * module.out_features
            layers.append((name, int(macs)))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return {"macs": sum(m for _, m in layers), "params": int(params), "layers": layers}


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        groups=conv.groups, bias=True,
    )
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.data = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias.detach()
    return fused


def fold_batchnorm(model: Student) -> Student:
    """A copy with every Conv+BatchNorm pair fused and the final BatchNorm1d folded into the linear layer.

    A network folded already (a QAT one) comes back as a plain copy.
    """
    model = copy.deepcopy(model).eval().cpu()
    if not isinstance(getattr(model, "bn", None), nn.BatchNorm1d):
        return model
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = _fold(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    bn, fc = model.bn, model.fc
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    linear = nn.Linear(fc.in_features, fc.out_features, bias=True)
    linear.weight.data = fc.weight.detach() * scale[:, None]
    linear.bias.data = bn.bias.detach() - bn.running_mean * scale
    model.fc = linear
    model.bn = nn.Identity()
    return model


def export_onnx(model: Student, path, opset: int = 13) -> None:
    """BatchNorm-folded student -> ONNX, static 1x3xSxS input ``input``, output ``embedding``.

    Takes the plain network only.  A QAT one is exported without its simulated rounding (the
    converter's PTQ rounds it the same way): :func:`edge_model.qat.strip_qat` it first.  This
    module never imports :mod:`edge_model.qat`, which builds on it: no import cycle.
    """
    if getattr(model, "qat", False):
        raise ValueError("export_onnx takes the plain network: strip the simulated rounding first "
                         "(edge_model.qat.strip_qat)")
    folded = fold_batchnorm(model)
    size = model.config.input_size
    dummy = torch.zeros(1, 3, size, size)
    kwargs = {}
    try:  # torch >= 2.5 defaults to the dynamo exporter; the classic one gives a plain graph
        import inspect

        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            kwargs["dynamo"] = False
    except (TypeError, ValueError):
        pass
    torch.onnx.export(
        folded, dummy, str(path), input_names=["input"], output_names=["embedding"],
        opset_version=opset, do_constant_folding=True, **kwargs,
    )
    # torch writes F.pad's pads as a small subgraph; onnx2tf mistranslates that, so fold it
    # into a constant (onnxsim is in the build extra).
    try:
        import onnx
        import onnxsim
    except ImportError:
        import logging

        logging.getLogger(__name__).warning("onnxsim missing: %s keeps unfolded Pad subgraphs", path)
        return
    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    if ok:
        onnx.save(simplified, str(path))
