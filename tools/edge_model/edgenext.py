"""EdgeFace-XXS in PyTorch, and an INT8-friendly student made from its weights.

EdgeFace-XXS (EdgeNeXt-XX-Small, dims 24/48/88/168, depths 2/2/6/2, 512-D) reaches door-grade
accuracy at about 47M multiply-adds, but full-INT8 TFLite loses 24 points on CFP-FF: per-tensor int8
cannot hold LayerNorm's per-token variance nor the cross-covariance attention (models/edgeface-xxs-fp16).
:func:`int8_student` keeps what the network learned and removes what quantises badly, each part replaced
by its closest INT8-friendly stand-in fitted on training crops (least squares, layer by layer, each fit
seeing the already-changed network's input and the exact network's output at that place):

- every LayerNorm -> a per-channel affine (a frozen BatchNorm), which folds into the adjacent conv;
- every cross-covariance attention branch -> one fitted 1x1 conv (its average channel mixing);
- the MLP hidden units that carry least per multiply-add are pruned until the network fits ``max_macs``;
- the 512-D readout kept, or cut to its principal subspace for a narrower gallery (``dim``).

What is left is convolutions, GELU, additions and one average pool.  The network is NCHW throughout
(1x1 convs for the MLPs), so the export is a plain conv graph.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

log = logging.getLogger(__name__)

DIMS = (24, 48, 88, 168)
DEPTHS = (2, 2, 6, 2)
KERNELS = (3, 5, 7, 9)
SCALES = (2, 2, 3, 4)  # res2net-style split of the last block of stages 1-3
HEADS = 4
LN_EPS = 1e-6
# EdgeFace wants (x - 127.5) / 127.5; the student's bundles take (x - 127.5) / 128 (student.INPUT_STD):
# the stem of the student absorbs the 128 / 127.5.
TEACHER_STD = 127.5


# ------------------------------------------------------------------------------------------ parts


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d)."""

    def __init__(self, channels: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        v = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) * torch.rsqrt(v + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class XCA(nn.Module):
    """Cross-covariance attention (channels attend to channels), on NCHW."""

    def __init__(self, dim: int, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # (B, heads, C/heads, N)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        out = (attn.softmax(dim=-1) @ v).permute(0, 3, 1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


FORMS = ("exact", "student", "folded")


class Site(nn.Identity):
    """A tensor the full-INT8 TFLite graph stores in int8 that is no module's output (a sum, a
    concatenation, the input, the pooled features): :func:`prepare_qat` rounds there too."""


def _norm(dim: int, form: str) -> nn.Module:
    """exact: LayerNorm; student: a per-channel affine (a frozen BatchNorm); folded: merged into a conv
    (what is left is the tensor the norm read, a :class:`Site`)."""
    if form == "exact":
        return ChannelNorm(dim)
    if form == "student":
        return _frozen_affine(dim, torch.ones(dim), torch.zeros(dim))
    return Site()


def _frozen_affine(channels: int, scale: torch.Tensor, shift: torch.Tensor) -> nn.BatchNorm2d:
    """A BatchNorm that computes ``scale * x + shift`` with its statistics as set (training keeps them
    frozen, like the Inception student's), so it folds into the neighbouring conv."""
    bn = nn.BatchNorm2d(channels, eps=0.0)
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.copy_(scale)
        bn.bias.copy_(shift)
    return bn.eval()


class ConvBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, hidden: int, form: str = "exact") -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = _norm(dim, form)
        self.mlp = Mlp(dim, hidden)
        self.gamma = nn.Parameter(torch.ones(dim)) if form != "folded" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x)))
        return x + (y if self.gamma is None else self.gamma[:, None, None] * y)


def fourier_positions(h: int, w: int, hidden: int = 32, temperature: float = 10000.0) -> torch.Tensor:
    """EdgeNeXt's sine positional features for an h x w map: (1, 2 * hidden, h, w)."""
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
    y = y / (h + 1e-6) * 2 * math.pi
    x = x / (w + 1e-6) * 2 * math.pi
    dim_t = torch.arange(hidden, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / hidden)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).permute(2, 0, 1)[None]


class SplitBlock(nn.Module):
    """EdgeNeXt's split depthwise + transposed (channel) attention block.  The attention branch is the
    exact :class:`XCA` after a LayerNorm, in the student one fitted 1x1 conv (``mix``), and folded into
    the MLP's first conv in the exported network."""

    def __init__(self, dim: int, scales: int, hidden: int, pos_side: int | None, form: str = "exact") -> None:
        super().__init__()
        width = max(int(math.ceil(dim / scales)), int(math.floor(dim // scales)))
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width)
                                   for _ in range(max(1, scales - 1)))
        self.chain_sums = nn.ModuleList(Site() for _ in range(len(self.convs) - 1))
        self.joined = Site()
        self.pos_embd, self.pos = None, None
        if pos_side is not None and form == "folded":
            self.pos = nn.Parameter(torch.zeros(1, dim, pos_side, pos_side))
        elif pos_side is not None:
            self.pos_embd = nn.Module()
            self.pos_embd.token_projection = nn.Conv2d(64, dim, 1)
            self.register_buffer("positions", fourier_positions(pos_side, pos_side), persistent=False)
        self.mix = None
        if form == "exact":
            self.norm_xca = ChannelNorm(dim)
            self.xca = XCA(dim)
            self.gamma_xca = nn.Parameter(torch.ones(dim))
        elif form == "student":
            self.mix = nn.Conv2d(dim, dim, 1)
        self.norm = _norm(dim, form)
        self.mlp = Mlp(dim, hidden)
        self.gamma = nn.Parameter(torch.ones(dim)) if form != "folded" else None

    def attention_branch(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mix is not None:
            return self.mix(x)
        if hasattr(self, "xca"):
            return self.gamma_xca[:, None, None] * self.xca(self.norm_xca(x))
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        parts = x.chunk(len(self.convs) + 1, dim=1)
        out, sp = [], parts[0]
        for i, conv in enumerate(self.convs):
            sp = conv(sp if i == 0 else self.chain_sums[i - 1](sp + parts[i]))
            out.append(sp)
        x = self.joined(torch.cat(out + [parts[-1]], 1))
        if self.pos_embd is not None:
            x = x + self.pos_embd.token_projection(self.positions)
        elif self.pos is not None:
            x = x + self.pos
        branch = self.attention_branch(x)
        if branch is not None:
            x = x + branch
        y = self.mlp(self.norm(x))
        return shortcut + (y if self.gamma is None else self.gamma[:, None, None] * y)


@dataclass
class EdgeNeXtConfig:
    """What :class:`EdgeNeXt` builds: ``form`` (see :data:`FORMS`), the MLP widths of every block stage by
    stage (``hidden``), the embedding width."""

    form: str = "exact"
    hidden: list[list[int]] = field(default_factory=lambda: [[4 * d] * n for d, n in zip(DIMS, DEPTHS)])
    embedding_size: int = 512
    input_size: int = 112
    family: str = "edgenext"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, not {self.form!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EdgeNeXtConfig":
        return cls(**data)


class EdgeNeXt(nn.Module):
    """EdgeFace-XXS's network (``EdgeNeXtConfig()``), or the student made from it."""

    def __init__(self, config: EdgeNeXtConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EdgeNeXtConfig()
        form = config.form
        self.stem = nn.Sequential(nn.Conv2d(3, DIMS[0], 4, stride=4), _norm(DIMS[0], form))
        stages, side, cin = [], config.input_size // 4, DIMS[0]
        for i, (dim, depth) in enumerate(zip(DIMS, DEPTHS)):
            stage = nn.Module()
            if i == 0:
                stage.downsample = nn.Identity()
            else:
                stage.downsample = nn.Sequential(_norm(cin, form), nn.Conv2d(cin, dim, 2, stride=2))
                side //= 2
            blocks = []
            for j in range(depth):
                hidden = config.hidden[i][j]
                if i > 0 and j == depth - 1:
                    blocks.append(SplitBlock(dim, SCALES[i], hidden, side if i == 1 else None, form))
                else:
                    blocks.append(ConvBlock(dim, KERNELS[i], hidden, form))
            stage.blocks = nn.Sequential(*blocks)
            stages.append(stage)
            cin = dim
        self.stages = nn.ModuleList(stages)
        self.head = nn.Module()
        self.head.norm = _norm(cin, form)
        self.head.fc = nn.Linear(cin, config.embedding_size)
        self.input_site = Site()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.input_site(x))
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) normalised -> (N, D) raw embedding."""
        pooled = self.features(x).mean((2, 3), keepdim=True)
        return self.head.fc(torch.flatten(self.head.norm(pooled), 1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=1)


# ------------------------------------------------------------------------------ EdgeFace's weights


def edgeface_from_onnx(path: Path) -> EdgeNeXt:
    """EdgeFace-XXS with the weights of its ONNX export (names as timm's; MatMul weights by node path)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # nn.Linear exported as MatMul(x, W^T) + Add(bias)
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[1].startswith("onnx::"):
            parts = node.name.strip("/").split("/")[:-1]
            weights[_dotted(parts) + ".weight"] = weights[node.input[1]].T
    model = EdgeNeXt()
    state = model.state_dict()
    loaded = {}
    for name, tensor in state.items():
        source = weights.get("model." + name)
        if source is None:
            raise KeyError(f"{path.name}: no weight for {name}")
        loaded[name] = torch.from_numpy(np.array(source)).reshape(tensor.shape).float()
    model.load_state_dict(loaded)
    return model.eval()


def _dotted(parts: list[str]) -> str:
    """['model', 'stages', 'stages.0', 'blocks', 'blocks.1', 'mlp', 'fc1'] -> 'model.stages.0.blocks.1.mlp.fc1'."""
    out: list[str] = []
    for p in parts:
        if "." in p:
            out[-1:] = [p]
        else:
            out.append(p)
    return ".".join(out)


# ------------------------------------------------------------------------------ the INT8 student


def _capture(model: nn.Module, module: nn.Module, batches: list[torch.Tensor], what: str) -> torch.Tensor:
    """The input (``what="in"``) or output of ``module`` over ``batches``, concatenated."""
    got: list[torch.Tensor] = []

    def hook(_m, inputs, output):
        got.append((inputs[0] if what == "in" else output).detach())
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        _run_until_captured(model, batches)
    finally:
        handle.remove()
    return torch.cat(got)


@torch.no_grad()
def _run_until_captured(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Forward each batch as far as the capturing hook, which raises :class:`_Stop`."""
    for x in batches:
        try:
            model(x)
        except _Stop:
            pass


class _Stop(Exception):
    """Ends a forward pass once the captured tensor is in hand."""


def _fit_affine(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (dim 1) the least-squares ``a * x + d`` for ``y``."""
    c = x.shape[1]
    xs = x.transpose(0, 1).reshape(c, -1).double()
    ys = y.transpose(0, 1).reshape(c, -1).double()
    mx, my = xs.mean(1), ys.mean(1)
    var = ((xs - mx[:, None]) ** 2).mean(1)
    cov = ((xs - mx[:, None]) * (ys - my[:, None])).mean(1)
    a = cov / var.clamp_min(1e-12)
    return a.float(), (my - a * mx).float()


def _fit_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares ``y ~ W x + b`` over every position of NCHW ``x`` and ``y``."""
    c = x.shape[1]
    xs = x.transpose(0, 1).reshape(c, -1).t().double()
    ys = y.transpose(0, 1).reshape(y.shape[1], -1).t().double()
    mx, my = xs.mean(0), ys.mean(0)
    xc, yc = xs - mx, ys - my
    gram = xc.t() @ xc
    gram += ridge * torch.trace(gram) / c * torch.eye(c, dtype=gram.dtype)
    w = torch.linalg.solve(gram, xc.t() @ yc).t()
    return w.float(), (my - w @ mx).float()


@torch.no_grad()
def replace_norms(teacher: EdgeNeXt, batches: list[torch.Tensor]) -> EdgeNeXt:
    """The network with every LayerNorm a fitted per-channel affine and every attention branch a fitted
    1x1 conv, in forward order: each is fitted on the changed network's input to the exact network's
    output at that place, so the later fits correct what the earlier ones lost.  ``batches``: normalised
    inputs."""
    student = copy.deepcopy(teacher).eval().requires_grad_(True)  # the teacher may be frozen; its copy trains
    student.config = dataclasses.replace(teacher.config, form="student")
    for name, module in teacher.named_modules():
        if not isinstance(module, ChannelNorm):
            continue
        if name.endswith("norm_xca"):  # the block's attention branch (it runs before the block's .norm)
            block_name = name.rsplit(".", 1)[0]
            block, t_block = student.get_submodule(block_name), teacher.get_submodule(block_name)
            w, b = _fit_linear(_capture_branch(student, block, batches, "in"),
                               _capture_branch(teacher, t_block, batches, "out"))
            mix = nn.Conv2d(w.shape[1], w.shape[0], 1)
            mix.weight.copy_(w[:, :, None, None])
            mix.bias.copy_(b)
            del block.norm_xca, block.xca, block.gamma_xca
            block.mix = mix
            continue
        a, d = _fit_affine(_capture(student, student.get_submodule(name), batches, "in"),
                           _capture(teacher, module, batches, "out"))
        _set_submodule(student, name, _frozen_affine(a.numel(), a, d))
    return student


def _capture_branch(model: EdgeNeXt, block: SplitBlock, batches, what: str) -> torch.Tensor:
    got: list[torch.Tensor] = []
    original = block.attention_branch

    def spy(x):
        out = original(x)
        got.append((x if what == "in" else out).detach())
        raise _Stop

    block.attention_branch = spy
    try:
        _run_until_captured(model, batches)
    finally:
        del block.attention_branch
    return torch.cat(got)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _affine_of(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def _conv(src: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1] * src.groups, weight.shape[0], src.kernel_size, src.stride, src.padding,
                     groups=src.groups)
    conv.weight.data, conv.bias.data = weight.contiguous(), bias.contiguous()
    return conv


@torch.no_grad()
def fold(student: EdgeNeXt) -> EdgeNeXt:
    """The exported form of a student: every affine merged into its neighbouring conv, the layer scales
    into the MLP's last conv, the attention stand-in into the MLP's first, the positional encoding a
    constant.  Computes the same function (float rounding aside); convs, GELU, adds and one mean remain."""
    if student.config.form != "student":
        raise ValueError(f"fold takes a student-form network, not {student.config.form!r}")
    student = copy.deepcopy(student).eval().cpu().float()
    out = EdgeNeXt(dataclasses.replace(student.config, form="folded")).eval()
    a, d = _affine_of(student.stem[1])
    conv = student.stem[0]
    out.stem[0] = _conv(conv, conv.weight * a[:, None, None, None], conv.bias * a + d)
    for i, (src, dst) in enumerate(zip(student.stages, out.stages)):
        if i > 0:
            a, d = _affine_of(src.downsample[0])
            conv = src.downsample[1]
            dst.downsample[1] = _conv(conv, conv.weight * a[None, :, None, None],
                                      conv.bias + (conv.weight * d[None, :, None, None]).sum((1, 2, 3)))
        for sb, db in zip(src.blocks, dst.blocks):
            a, d = _affine_of(sb.norm)
            w1, b1 = sb.mlp.fc1.weight[:, :, 0, 0], sb.mlp.fc1.bias
            if isinstance(sb, ConvBlock):
                dw = sb.conv_dw
                db.conv_dw = _conv(dw, dw.weight * a[:, None, None, None], dw.bias * a + d)
                db.mlp.fc1 = _conv(sb.mlp.fc1, w1[:, :, None, None], b1)
            else:
                for k, c in enumerate(sb.convs):
                    db.convs[k] = _conv(c, c.weight, c.bias)
                if sb.pos_embd is not None:
                    db.pos.data = sb.pos_embd.token_projection(sb.positions).clone()
                mix, c = sb.mix.weight[:, :, 0, 0], sb.mix.bias
                through = mix + torch.eye(mix.shape[0])  # x + mix(x)
                db.mlp.fc1 = _conv(sb.mlp.fc1, ((w1 * a[None, :]) @ through)[:, :, None, None],
                                   w1 @ (a * c + d) + b1)
            g = sb.gamma
            w2 = sb.mlp.fc2.weight
            db.mlp.fc2 = _conv(sb.mlp.fc2, w2 * g[:, None, None, None], sb.mlp.fc2.bias * g)
    a, d = _affine_of(student.head.norm)
    fc = student.head.fc
    out.head.fc.weight.data = fc.weight * a[None, :]
    out.head.fc.bias.data = fc.bias + fc.weight @ d
    return out


def block_list(model: EdgeNeXt) -> list[tuple[int, int, nn.Module]]:
    return [(i, j, b) for i, stage in enumerate(model.stages) for j, b in enumerate(stage.blocks)]


def folded_macs(student: EdgeNeXt) -> int:
    """Multiply-adds of the exported network (the folded student) on one face."""
    from .student import count_macs

    return count_macs(fold(student), student.config.input_size)["macs"]


@torch.no_grad()
def prune_hidden(student: EdgeNeXt, batches: list[torch.Tensor], max_macs: int) -> EdgeNeXt:
    """Drop the MLP hidden units that carry the least of their block's output per multiply-add until
    the exported network fits ``max_macs``; each dropped unit's mean output moves into the bias."""
    student = copy.deepcopy(student).eval()
    blocks = block_list(student)
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block -> (E h, E h^2)
    stream: dict[int, float] = {}  # block -> E |output|^2 per position, the scale its units are judged on
    hooks = []
    for k, (_, _, b) in enumerate(blocks):
        def hook(_m, _i, out, k=k):
            h = out.transpose(0, 1).reshape(out.shape[1], -1).double()
            m1, m2 = stats.get(k, (0.0, 0.0))
            stats[k] = (m1 + h.sum(1), m2 + (h * h).sum(1))

        def out_hook(_m, _i, out, k=k):
            stream[k] = stream.get(k, 0.0) + float(out.double().pow(2).sum(1).sum())
        hooks.append(b.mlp.act.register_forward_hook(hook))
        hooks.append(b.register_forward_hook(out_hook))
    count = 0
    try:
        for x in batches:
            student.features(x)
            count += len(x)
    finally:
        for h in hooks:
            h.remove()
    side = {0: student.config.input_size // 4}
    for i in range(1, len(DIMS)):
        side[i] = side[i - 1] // 2
    candidates = []
    for k, (i, j, b) in enumerate(blocks):
        tokens = count * side[i] ** 2
        mean, sq = stats[k][0] / tokens, stats[k][1] / tokens
        out_w = (b.mlp.fc2.weight[:, :, 0, 0] * b.gamma[:, None]).double()
        energy = sq * (out_w ** 2).sum(0)  # E (gamma W2[:, u] h_u)^2 per unit
        share = energy / (stream[k] / tokens)
        cost = 2 * DIMS[i] * side[i] ** 2
        for u in range(len(share)):
            candidates.append((float(share[u]) / cost, k, u, float(mean[u]), cost))
    candidates.sort()
    excess = folded_macs(student) - max_macs
    drop: dict[int, list[tuple[int, float]]] = {}
    for _, k, u, mean, cost in candidates:
        if excess <= 0:
            break
        if len(drop.get(k, [])) >= len(stats[k][0]) - 8:  # never empty a block
            continue
        drop.setdefault(k, []).append((u, mean))
        excess -= cost
    hidden = [list(h) for h in student.config.hidden]
    for k, units in drop.items():
        i, j, b = blocks[k]
        gone = torch.tensor(sorted(u for u, _ in units))
        means = torch.zeros(b.mlp.fc1.out_channels)
        for u, m in units:
            means[u] = m
        keep = torch.tensor([u for u in range(b.mlp.fc1.out_channels) if u not in set(gone.tolist())])
        fc1, fc2 = b.mlp.fc1, b.mlp.fc2
        fc2_bias = fc2.bias + fc2.weight[:, :, 0, 0] @ means
        b.mlp.fc1 = _conv(fc1, fc1.weight[keep], fc1.bias[keep])
        b.mlp.fc2 = _conv(fc2, fc2.weight[:, keep], fc2_bias)
        hidden[i][j] = len(keep)
    student.config = dataclasses.replace(student.config, hidden=hidden)
    return student


@torch.no_grad()
def principal_readout(student: EdgeNeXt, reference: torch.Tensor, dim: int) -> tuple[EdgeNeXt, torch.Tensor]:
    """The readout restricted to the ``dim`` directions that hold most of the energy of ``reference``,
    the teacher's normalised embeddings of training crops (uncentred PCA: it keeps cosine similarities
    best).  The basis must come from the teacher: the student's start is the target's subspace, not its
    own.  Returns the student and the (dim, D) basis."""
    emb = F.normalize(reference.double(), dim=1)
    _, vecs = torch.linalg.eigh(emb.t() @ emb)
    basis = vecs[:, -dim:].flip(1).t().float()
    student = copy.deepcopy(student)
    fc = student.head.fc
    new = nn.Linear(fc.in_features, dim)
    new.weight.data, new.bias.data = basis @ fc.weight, basis @ fc.bias
    student.head.fc = new
    student.config = dataclasses.replace(student.config, embedding_size=dim)
    return student, basis


def to_student_spec(student: EdgeNeXt, std: float) -> EdgeNeXt:
    """Scale the stem so the network takes (x - 127.5) / ``std`` instead of EdgeFace's / 127.5."""
    with torch.no_grad():
        student.stem[0].weight.mul_(std / TEACHER_STD)
    return student


@torch.no_grad()
def equalise(folded: EdgeNeXt, batches: list[torch.Tensor]) -> EdgeNeXt:
    """The same function with per-channel ranges evened out where per-tensor int8 would otherwise spend its
    256 steps on a few channels (one ran to -14 while the rest stayed within +-0.3 on the first trained
    student).  Both rescalings are exact, zero padding included:

    - each residual stream: a channel is scaled down by the most it stands out in any one tensor of its
      stage (the stage's first conv output and every block output, each against its own median channel
      peak).  Writers (the stage's first conv, every block's last conv) divide their rows by ``s``,
      readers (depthwise convs, the split chain, the next stage's conv, the readout) multiply their inputs
      by it (capped at :data:`PASS_THROUGH_CAP` for the channels a split block passes untouched to a dense
      conv);
    - each conv block's depthwise output (it carries the LayerNorm stand-in's scales): its outlier
      channels scaled down, the MLP's first conv scaled up.

    Measured on stage 2, simulated full-INT8 cosine to float on held-out crops (the simulation of then,
    without the split blocks' sums): 0.706 without, 0.931 with the stream scaled by its pooled peaks (the
    first rule), 0.952 judged per tensor, 0.956 with the depthwise outputs as well, 0.963 with the cap.
    The converted TFLite's mean cosine to float on its calibration crops: 0.923 with the first rule,
    0.951 with this one (CFP-FF INT8 97.16 -> 97.33 %)."""
    if folded.config.form != "folded":
        raise ValueError("equalise takes a folded network")
    model = copy.deepcopy(folded).eval()
    peaks = _channel_peaks(model, batches, {
        (i, k): module for i, stage in enumerate(model.stages)
        for k, module in enumerate([model.stem if i == 0 else stage.downsample, *stage.blocks])})
    for i, stage in enumerate(model.stages):
        ratios = torch.stack([p / p.median() for (j, _), p in peaks.items() if j == i])
        s = ratios.amax(0).clamp_min(MIN_STREAM_SCALE)
        for block in stage.blocks:
            if isinstance(block, SplitBlock):
                through = s.chunk(len(block.convs) + 1)[-1]
                through.clamp_(max=PASS_THROUGH_CAP)
        writer = model.stem[0] if i == 0 else stage.downsample[1]
        _scale_rows(writer, 1 / s)
        for block in stage.blocks:
            _scale_rows(block.mlp.fc2, 1 / s)
            if isinstance(block, ConvBlock):
                block.conv_dw.weight.mul_(s[:, None, None, None])
            else:
                _equalise_split(block, s)
        reader = model.stages[i + 1].downsample[1] if i + 1 < len(model.stages) else None
        if reader is not None:
            reader.weight.mul_(s[None, :, None, None])
        else:
            model.head.fc.weight.mul_(s[None, :])
    conv_blocks = [b for _, _, b in block_list(model) if isinstance(b, ConvBlock)]
    peaks = _channel_peaks(model, batches, {k: b.conv_dw for k, b in enumerate(conv_blocks)})
    for k, block in enumerate(conv_blocks):
        r = (peaks[k] / peaks[k].median()).clamp_min(1.0)
        _scale_rows(block.conv_dw, 1 / r)
        block.mlp.fc1.weight.mul_(r[None, :, None, None])
    return model


# Only outliers are scaled down: scaling the quiet channels up as well measured worse or no better (stage 2,
# per-tensor rule: floor 0.5 gave 0.949 against 0.951; the first rule lost 0.02 with floor 0.5 or 0.25).
MIN_STREAM_SCALE = 1.0
# A split block hands the last part of its input, untouched, to the MLP's first conv, a dense 1x1: there a
# channel scaled down by s puts s into one weight column, and per-row int8 weights lose the other columns
# (stage 2: one column at 355 against a median of 8; that one layer's weight rounding cost 0.0045 cosine).
# Capping s there trades activation range for weight range: simulated full-INT8 cosine 0.956 uncapped,
# 0.962 at 8, 0.963 at 16, 0.959 at 4; as a square root of s instead, 0.956.
PASS_THROUGH_CAP = 16.0


def _channel_peaks(model: nn.Module, batches: list[torch.Tensor], modules: dict) -> dict:
    """The largest |output| per channel of each module over ``batches``."""
    peaks: dict = {}
    hooks = []
    for key, module in modules.items():
        def hook(_m, _i, out, key=key):
            peak = out.abs().amax((0, 2, 3))
            peaks[key] = peak if key not in peaks else torch.maximum(peaks[key], peak)
        hooks.append(module.register_forward_hook(hook))
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return peaks


def _scale_rows(conv: nn.Conv2d, factor: torch.Tensor) -> None:
    conv.weight.mul_(factor[:, None, None, None])
    conv.bias.mul_(factor)


def _equalise_split(block: SplitBlock, s: torch.Tensor) -> None:
    """Input channels arrive divided by ``s``.  Each conv of the res2net chain takes its input back to
    full scale and hands on its output in the scale of the part it is added to; the concatenation then
    carries the per-channel scale ``t``, which the positional constant takes on and the MLP's first conv
    undoes."""
    parts = list(s.chunk(len(block.convs) + 1))
    t = []
    for k, conv in enumerate(block.convs):
        out_scale = parts[k + 1] if k + 1 < len(block.convs) else torch.ones_like(parts[k])
        # input of conv k: part 0 (k = 0) or sp_{k-1} + part k, both divided by parts[k]
        conv.weight.mul_((parts[k] / out_scale)[:, None, None, None])
        conv.bias.div_(out_scale)
        t.append(out_scale)
    t.append(parts[-1])
    t = torch.cat(t)
    if block.pos is not None:
        block.pos.div_(t[None, :, None, None])
    block.mlp.fc1.weight.mul_(t[None, :, None, None])


QAT_SITES = (nn.Conv2d, nn.Linear, nn.GELU, ConvBlock, SplitBlock, Site)


def prepare_qat(folded: EdgeNeXt, natural: EdgeNeXt | None = None) -> EdgeNeXt:
    """A copy of the exported network with full-INT8 TFLite's rounding simulated
    (:mod:`edge_model.qat`'s quantisers): weights per output channel; per tensor the input, the output of
    every conv, GELU, residual sum (block output), split-chain sum, concatenation, the pooled features and
    the embedding (without the split blocks' sums and concatenations and the input, the simulation was
    0.0065 cosine kinder than with them, stage 2).  The quantisers are submodules
    (``act_quant``), so :func:`edge_model.qat.calibrate` sets their ranges; :func:`strip_qat` undoes it.

    Training never moves a range (``momentum=0``): the converter will take each one as the min/max over
    its calibration crops, so the trainer re-takes them the same way, on clean crops, every so many
    steps.  Moving averages of per-batch ranges (the Inception student's QAT) train on a finer grid
    than the one shipped: a 20-min stage that way lifted INT8 fidelity yet lost CFP-FF accuracy.

    ``natural``, the same network before :func:`equalise`: each tensor is then trained in its scale
    (``folded`` = ``natural`` x a fixed factor, :class:`Rescaled`).  Adam moves every weight by about the
    learning rate whatever its size, so in the equalised scale the rows divided by up to ~40 moved that much
    faster: held-out cosine fell 0.860 -> 0.840 in the first 100 steps at 5e-5."""
    from .qat import ActFakeQuant, WeightFakeQuant

    if folded.config.form != "folded":
        raise ValueError("prepare_qat takes a folded network")
    model = copy.deepcopy(folded)
    if natural is not None:
        nat = dict(natural.named_parameters())
        for name, value in list(model.named_parameters()):
            owner, _, attr = name.rpartition(".")
            base = nat[name].detach()
            factor = torch.where(base != 0, value.detach() / torch.where(base != 0, base, 1), 1.0)
            parametrize.register_parametrization(model.get_submodule(owner), attr, Rescaled(factor))
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant())
        if isinstance(module, QAT_SITES):
            module.act_quant = ActFakeQuant(momentum=0.0)
            module.register_forward_hook(_quantise_output)
    model.qat = True
    return model


def _quantise_output(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return module.act_quant(output)


class Rescaled(nn.Module):
    """A tensor trained in another scale: ``value = original * factor`` (factor fixed)."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", factor)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.factor

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value / self.factor


@torch.no_grad()
def strip_qat(model: EdgeNeXt) -> EdgeNeXt:
    """The float network under the simulation (weights as trained, unrounded; no quantisers)."""
    from .qat import WeightFakeQuant

    if not getattr(model, "qat", False):
        return model
    plain = EdgeNeXt(model.config)
    rounders = [m for m in model.modules() if isinstance(m, WeightFakeQuant)]
    for m in rounders:
        m.bypass = True
    try:
        state = {}
        for key in plain.state_dict():
            owner, _, attr = key.rpartition(".")
            state[key] = getattr(model.get_submodule(owner), attr).detach().cpu().clone()
    finally:
        for m in rounders:
            m.bypass = False
    plain.load_state_dict(state)
    return plain.eval()


def student_from_edgeface(teacher: EdgeNeXt, batches: list[torch.Tensor], max_macs: int, dim: int,
                          input_std: float) -> tuple[EdgeNeXt, torch.Tensor]:
    """The starting student: :func:`replace_norms`, input spec ``(x - 127.5) / input_std``,
    :func:`prune_hidden` to ``max_macs``, :func:`principal_readout` to ``dim``.  ``batches`` are clean
    training crops in EdgeFace's normalisation.  Returns the student and its (dim, 512) basis."""
    student = to_student_spec(replace_norms(teacher, batches), input_std)
    ours = [x * TEACHER_STD / input_std for x in batches]
    if max_macs:
        student = prune_hidden(student, ours, max_macs)
    if dim == teacher.config.embedding_size:  # EdgeFace's own space: nothing to cut
        basis = torch.eye(dim)
    else:
        with torch.no_grad():
            reference = torch.cat([teacher.embed(x) for x in batches])
        student, basis = principal_readout(student, reference, dim)
    log.info("student from EdgeFace: %d MACs exported, hidden %s", folded_macs(student), student.config.hidden)
    return student.eval(), basis
