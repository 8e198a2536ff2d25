"""Where a student's training starts: the shipped INT8 bundle's weights in float, and Net2Net widening.

:func:`student_from_tflite` reads back the float network of a student TFLite (the shipped
``models/student-int8`` one, so no float checkpoint has to be committed): every convolution's int8
weights and int32 biases are dequantised with their per-channel scales and loaded into a
:class:`~edge_model.student.Student` whose BatchNorms are then re-inserted from the statistics of
real crops (:func:`recalibrate_batchnorm`), so it computes the folded network exactly in eval mode
and trains like the original did (batch statistics close to the running ones).

The TFLite graph written by onnx2tf names its kernels ``tf.nn.convolution_K`` and
``tf.compat.v1.nn.depthwise_conv2d_K`` in the ONNX node order, which is the order PyTorch runs the
student's layers in (but for one swap, :func:`tflite_order`); the shapes are checked, and the test
compares the read-back network's embeddings with the TFLite's on real crops.

:func:`widen` grows a trained student to a wider (and deeper) :class:`StudentConfig` that computes
the same function (Net2Net, Chen et al. 2016): a new channel copies an old one of the same tensor,
and every layer reading copied channels divides the copies' outgoing weights by their number.
Residual streams share one channel map per stage, built so that each branch's new channels copy
that branch's old ones; a block added at the end of a stage starts with its branch outputs zeroed
(the BatchNorm scale and shift of each branch's last layer), so it adds nothing yet.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .student import InceptionBlock, Student, StudentConfig

SHIPPED_TFLITE = Path(__file__).resolve().parents[2] / "models" / "student-int8" / "student-int8-cal300-seed0.tflite"


# ----------------------------------------------------------------------------- TFLite read-back


def _convs(seq: nn.Module) -> list[nn.Module]:
    return [m for m in seq.modules() if isinstance(m, nn.Conv2d)]


def tflite_order(model: Student) -> list[nn.Module]:
    """The Conv2d and Linear layers in the order onnx2tf numbers their kernels: as PyTorch runs them,
    except that a stride-1 block's plain 1x1 branch comes before its pooling branch (measured on the
    shipped bundle: the exported graph puts the max-pool's Pad after the 1x1)."""
    order = _convs(model.stem)
    for block in model.blocks:
        order += _convs(block.b3) + _convs(block.b5) + (_convs(block.b1) if block.b1 is not None else [])
        order += _convs(block.bp)
    return order + [model.head[0], model.gdc[0], model.fc]


def _tflite_tensors(path: Path) -> dict[str, dict]:
    """name -> {"array", "scales", "shape"} of every constant int8/int32 tensor of a TFLite file."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_path=str(path))
    out = {}
    for d in interp.get_tensor_details():
        if d["dtype"] not in (np.int8, np.int32) or len(d["quantization_parameters"]["scales"]) == 0:
            continue
        try:
            array = interp.get_tensor(d["index"])
        except ValueError:  # an activation, not a constant
            continue
        for part in d["name"].split(";"):
            out.setdefault(part, []).append({"array": array, "scales": d["quantization_parameters"]["scales"],
                                             "dtype": d["dtype"]})
    return out


def _kernel_name(layer: nn.Module, counters: dict[str, int]) -> str:
    kind = "depthwise" if isinstance(layer, nn.Conv2d) and layer.groups > 1 else (
        "conv" if isinstance(layer, nn.Conv2d) else "fc")
    k = counters[kind]
    counters[kind] += 1
    suffix = "" if k == 0 else f"_{k}"
    if kind == "depthwise":
        return f"model/tf.compat.v1.nn.depthwise_conv2d{suffix}/depthwise"
    if kind == "conv":
        return f"model/tf.nn.convolution{suffix}/convolution"
    return f"model/tf.linalg.matmul{suffix}/MatMul"


def _dequantised(entries: list[dict], dtype) -> np.ndarray:
    # per-channel scales mark the constant kernel and bias (an activation named after the op has one)
    entry = next(e for e in entries if e["dtype"] == dtype and len(e["scales"]) > 1)
    scales = np.asarray(entry["scales"], np.float32)
    array = entry["array"].astype(np.float32)
    if dtype == np.int32:
        return array * scales
    axis = 3 if array.shape[0] == 1 and array.ndim == 4 else 0  # depthwise kernels are [1, kh, kw, C]
    shape = [1] * array.ndim
    shape[axis] = -1
    return array * scales.reshape(shape)


def _torch_weight(kernel: np.ndarray, layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.from_numpy(kernel)
    if layer.groups > 1:  # [1, kh, kw, C] -> [C, 1, kh, kw]
        return torch.from_numpy(kernel[0].transpose(2, 0, 1)[:, None].copy())
    return torch.from_numpy(kernel.transpose(0, 3, 1, 2).copy())  # [O, kh, kw, I] -> [O, I, kh, kw]


def folded_weights_from_tflite(path: Path, config: StudentConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every Conv2d/Linear of the BatchNorm-folded student, in :func:`tflite_order`."""
    tensors = _tflite_tensors(path)
    counters = {"conv": 0, "depthwise": 0, "fc": 0}
    out = []
    for layer in tflite_order(Student(config)):
        name = _kernel_name(layer, counters)
        if name not in tensors:
            raise ValueError(f"{path}: no kernel {name} for {layer}")
        weight = _torch_weight(_dequantised(tensors[name], np.int8), layer)
        if tuple(weight.shape) != tuple(layer.weight.shape):
            raise ValueError(f"{path}: {name} is {tuple(weight.shape)}, the student wants {tuple(layer.weight.shape)}")
        bias_key = "model/embedding/AddV2" if isinstance(layer, nn.Linear) else name
        bias = torch.from_numpy(_dequantised(tensors[bias_key], np.int32))
        out.append((weight, bias))
    return out


def _bn_after(model: Student) -> dict[nn.Module, nn.Module]:
    """Each Conv2d/Linear -> the BatchNorm that follows it."""
    pairs = {model.fc: model.bn}
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for a, b in zip(module, list(module)[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs[a] = b
    return pairs


def load_folded(model: Student, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> Student:
    """Folded (weight, bias) pairs into a BatchNorm student: each BatchNorm becomes "add the bias"."""
    bns = _bn_after(model)
    with torch.no_grad():
        for layer, (weight, bias) in zip(tflite_order(model), weights):
            layer.weight.copy_(weight)
            bn = bns[layer]
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(float(np.sqrt(1.0 + bn.eps)))
            bn.bias.copy_(bias)
    return model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: Student, x: torch.Tensor) -> Student:
    """Re-insert BatchNorm statistics measured on ``x`` without changing the eval-mode function.

    For each layer with pre-BatchNorm output y (mean m, variance v over ``x``): running stats (m, v),
    scale sqrt(v + eps), shift (old eval output at y = 0) + m - so eval is unchanged and a training
    batch, normalised by its own statistics, sees about the same function.
    """
    bns = _bn_after(model)
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod, _inputs, y):
        dims = [0, 2, 3] if y.dim() == 4 else [0]
        stats[mod] = (y.mean(dims), y.var(dims, unbiased=False))

    hooks = [layer.register_forward_hook(hook) for layer in bns]
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    for layer, bn in bns.items():
        m, v = stats[layer]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # eval: y * scale + shift
        shift = bn.bias - bn.running_mean * scale
        std = torch.sqrt(v + bn.eps)
        bn.running_mean.copy_(m)
        bn.running_var.copy_(v)
        bn.weight.copy_(scale * std)
        bn.bias.copy_(shift + scale * m)
    return model


def student_from_tflite(path: Path = SHIPPED_TFLITE, config: StudentConfig | None = None,
                        calibration: torch.Tensor | None = None) -> Student:
    """The float student inside a student TFLite; ``calibration`` (normalised inputs) re-inserts BatchNorm."""
    config = config or StudentConfig()
    model = load_folded(Student(config), folded_weights_from_tflite(Path(path), config))
    if calibration is not None:
        recalibrate_batchnorm(model, calibration)
    return model


# ---------------------------------------------------------------------------------- Net2Net


def _partition(cout: int, stride: int) -> list[int]:
    """Channel boundaries of an Inception block's concatenated branches (as :class:`InceptionBlock` builds)."""
    q = cout // 4
    if stride == 1:
        widths = [q, q, q, cout - 3 * q]
    else:
        w3 = max(8, int(round(cout * 3 / 8 / 8)) * 8)
        widths = [w3, q, cout - w3 - q]
    return list(np.cumsum([0] + widths))


def _atoms(cout: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(stride-1 branch, reduction branch) -> (start, width) of the channels both block kinds agree on."""
    s1, s2 = _partition(cout, 1), _partition(cout, 2)
    cuts = sorted(set(s1) | set(s2))
    seg = lambda bounds, c: int(np.searchsorted(bounds, c, side="right")) - 1  # noqa: E731
    return {(seg(s1, a), seg(s2, a)): (int(a), int(b - a)) for a, b in zip(cuts, cuts[1:])}


def stream_map(old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    """A channel map new -> old for a stage's residual stream: each new channel copies an old one of the
    same branch in both block kinds (stride-1 and reduction), the first ones identically."""
    if new == old:
        return torch.arange(old)
    atoms_old, atoms_new = _atoms(old), _atoms(new)
    if set(atoms_old) != set(atoms_new) or any(atoms_new[k][1] < atoms_old[k][1] for k in atoms_old):
        raise ValueError(f"cannot widen a stage of {old} channels to {new}: the branch layouts do not nest; "
                         f"pick a width whose branches all grow (e.g. {old} x 2)")
    parts = [_segment_map(atoms_old[k][0], atoms_old[k][1], atoms_new[k][1], gen)
             for k in sorted(atoms_new, key=lambda k: atoms_new[k][0])]
    return torch.cat(parts)


def _segment_map(start: int, old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    extra = torch.randint(old, (new - old,), generator=gen)
    return start + torch.cat([torch.arange(old), extra])


def free_map(old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    """A channel map new -> old for a tensor no residual ties (stem, head)."""
    return _segment_map(0, old, new, gen)


def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out_map: torch.Tensor, in_map: torch.Tensor | None) -> None:
    """dst.weight[o, i] = src.weight[out_map[o], in_map[i]] / (copies of in_map[i]); depthwise: no division."""
    w = src.weight.detach()[out_map]
    if src.groups == 1 and in_map is not None:
        counts = torch.bincount(in_map, minlength=src.in_channels).float()
        w = w[:, in_map] / counts[in_map].view(1, -1, 1, 1)
    dst.weight.data.copy_(w)


def _copy_bn(dst: nn.BatchNorm2d | nn.BatchNorm1d, src, out_map: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data.copy_(getattr(src, name).detach()[out_map])


def _copy_conv_bn(dst: nn.Sequential, src: nn.Sequential, out_map: torch.Tensor, in_map: torch.Tensor | None) -> None:
    _copy_conv(dst[0], src[0], out_map, in_map)
    _copy_bn(dst[1], src[1], out_map)


def _branch_maps(stream: torch.Tensor, old_cout: int, new_cout: int, stride: int) -> list[torch.Tensor | None]:
    """The stream map cut into each branch's own map (indices into that old branch's channels)."""
    old_cuts, new_cuts = _partition(old_cout, stride), _partition(new_cout, stride)
    maps = [stream[new_cuts[k]:new_cuts[k + 1]] - old_cuts[k] for k in range(len(old_cuts) - 1)]
    return ([None] if stride == 2 else []) + maps


def _widen_block(dst: InceptionBlock, src: InceptionBlock, in_map: torch.Tensor, out_map: torch.Tensor,
                 old_cout: int) -> None:
    m1, m3, m5, mp = _branch_maps(out_map, old_cout, len(out_map), src.stride)
    if src.b1 is not None:
        _copy_conv_bn(dst.b1, src.b1, m1, in_map)
    if src.stride == 1:
        _copy_conv_bn(dst.b3[0], src.b3[0], m3, in_map)
        _copy_conv_bn(dst.b3[1], src.b3[1], m3, None)
        _copy_conv_bn(dst.b5[0], src.b5[0], m5, in_map)
        _copy_conv_bn(dst.b5[1], src.b5[1], m5, None)
        _copy_conv_bn(dst.b5[2], src.b5[2], m5, None)
    else:
        _copy_conv_bn(dst.b3[0], src.b3[0], in_map, None)
        _copy_conv_bn(dst.b3[1], src.b3[1], m3, in_map)
        _copy_conv_bn(dst.b5[0], src.b5[0], in_map, None)
        _copy_conv_bn(dst.b5[1], src.b5[1], m5, in_map)
        _copy_conv_bn(dst.b5[2], src.b5[2], m5, None)
    _copy_conv_bn(dst.bp, src.bp, mp, in_map)


def _silence_block(block: InceptionBlock) -> None:
    """Zero each branch's output (its last BatchNorm's scale and shift): the residual block adds nothing."""
    for branch in (block.b1, block.b3, block.b5, block.bp):
        if branch is None:
            continue
        last = branch[-1] if isinstance(branch[-1], nn.Sequential) else branch
        last[1].weight.data.zero_()
        last[1].bias.data.zero_()


def _stage_blocks(model: Student) -> list[list[InceptionBlock]]:
    stages, i = [], 0
    for _cout, repeats, _side in model.config.layout()["stages"]:
        stages.append(list(model.blocks[i:i + 1 + repeats]))
        i += 1 + repeats
    return stages


def _check_growth(old: StudentConfig, new: StudentConfig) -> None:
    po, pn = old.layout(), new.layout()
    if (old.input_size, old.embedding_size) != (new.input_size, new.embedding_size) or len(po["stages"]) != len(pn["stages"]):
        raise ValueError("widening keeps the input size, the embedding size and the number of stages")
    if old.readout != "gdc" or new.readout != "gdc":
        raise ValueError("widening grows a GDC readout; change the readout afterwards (fc_readout)")
    pairs = [(po["stem"], pn["stem"]), (po["stem_out"], pn["stem_out"]), (po["head"], pn["head"])]
    pairs += [(a[0], b[0]) for a, b in zip(po["stages"], pn["stages"])]
    if any(b < a for a, b in pairs) or any(b[1] < a[1] for a, b in zip(po["stages"], pn["stages"])):
        raise ValueError(f"widening only grows channels and blocks: {old} -> {new}")


@torch.no_grad()
def resample_input(model: Student, input_size: int) -> Student:
    """``model`` for ``input_size`` x ``input_size`` faces: every weight kept, the global depthwise (GDC)
    kernel resampled to the new last-stage side with its per-channel sum kept.

    Not function-preserving (every convolution now sees the face at another scale), but the nearest start
    a smaller input has to trained weights; the first steps of the stage adapt it.
    """
    src = copy.deepcopy(model).eval().cpu()
    if src.config.readout != "gdc":
        raise ValueError("resample_input resamples a GDC kernel; an fc readout has weights per position")
    dst = Student(dataclasses.replace(src.config, input_size=input_size))
    state = src.state_dict()
    kernel = state["gdc.0.weight"]
    side = dst.gdc[0].kernel_size
    if tuple(kernel.shape[-2:]) != tuple(side):
        resized = F.interpolate(kernel, size=side, mode="bilinear", align_corners=True)
        # an even shift, not a rescale: a kernel of mixed signs can resample to a sum near zero
        gap = kernel.sum(dim=(2, 3), keepdim=True) - resized.sum(dim=(2, 3), keepdim=True)
        state["gdc.0.weight"] = resized + gap / (side[0] * side[1])
    dst.load_state_dict(state)
    return dst.eval()


@torch.no_grad()
def widen(model: Student, config: StudentConfig, seed: int = 0) -> Student:
    """A student of ``config`` (as wide or wider, as many blocks or more) computing ``model``'s function."""
    src = copy.deepcopy(model).eval().cpu()
    _check_growth(src.config, config)
    gen = torch.Generator().manual_seed(seed)
    dst = Student(config)
    po, pn = src.config.layout(), config.layout()
    stem_map = free_map(po["stem"], pn["stem"], gen)
    stem_out = free_map(po["stem_out"], pn["stem_out"], gen)
    _copy_conv_bn(dst.stem[0], src.stem[0], stem_map, torch.arange(3))
    _copy_conv_bn(dst.stem[1], src.stem[1], stem_map, None)
    _copy_conv_bn(dst.stem[2], src.stem[2], stem_out, stem_map)
    in_map = stem_out
    for old_blocks, new_blocks, (cout_old, _, _), (cout_new, _, _) in zip(
            _stage_blocks(src), _stage_blocks(dst), po["stages"], pn["stages"]):
        stream = stream_map(cout_old, cout_new, gen)
        for k, block in enumerate(new_blocks):
            if k < len(old_blocks):
                _widen_block(block, old_blocks[k], in_map if k == 0 else stream, stream, cout_old)
            else:
                _widen_block(block, old_blocks[-1], stream, stream, cout_old)
                _silence_block(block)
        in_map = stream
    head_map = free_map(po["head"], pn["head"], gen)
    _copy_conv_bn(dst.head, src.head, head_map, in_map)
    _copy_conv_bn(dst.gdc, src.gdc, head_map, None)
    counts = torch.bincount(head_map, minlength=po["head"]).float()
    dst.fc.weight.data.copy_(src.fc.weight.detach()[:, head_map] / counts[head_map])
    dst.bn.load_state_dict(src.bn.state_dict())
    return dst.eval()


@torch.no_grad()
def fc_readout(model: Student, head: int, batches: Iterable[torch.Tensor], ridge: float = 1e-3) -> Student:
    """``model`` with its GDC + linear readout replaced by one linear layer over the whole last map
    (``readout="fc"``) and its 1x1 head trimmed to the ``head`` channels that carry most of the embedding.

    GDC then linear is itself a linear map of the last map, rank one in space per channel, so with every
    channel kept the new layer starts as that composite and computes the same function.  Trimming loses
    the dropped channels' share; the readout of the kept ones is then refitted on ``batches`` (clean
    training crops, already normalised) towards the old pre-BatchNorm embedding, by ridge regression
    anchored to the composite (``ridge`` times the mean feature energy), so few crops cannot pull it far.
    """
    src = copy.deepcopy(model).eval().cpu()
    if src.config.readout != "gdc":
        raise ValueError("fc_readout starts from a GDC readout")
    full = src.config.layout()["head"]
    if not 8 <= head <= full:
        raise ValueError(f"the trimmed head keeps between 8 and {full} channels, not {head}")
    dst = Student(dataclasses.replace(src.config, head=head, readout="fc"))
    conv, bn = src.gdc[0], src.gdc[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fc = src.fc.weight  # (D, C)
    composite = fc[:, :, None, None] * (scale[:, None, None] * conv.weight[:, 0])[None]  # (D, C, S, S)
    offset = fc @ (bn.bias - bn.running_mean * scale)
    out_scale = src.bn.weight / torch.sqrt(src.bn.running_var + src.bn.eps)

    maps, targets, share_sum, share_sq = [], [], 0.0, 0.0
    for x in batches:
        m = src.head(src.blocks(src.stem(x)))
        per_channel = torch.einsum("dcyx,ncyx->ncd", composite, m)
        targets.append(per_channel.sum(1) + offset)  # the old readout's pre-BatchNorm embedding
        share = per_channel * out_scale  # each channel's share, as the output sees it
        share_sum = share_sum + share.sum(0)
        share_sq = share_sq + share.pow(2).sum(dim=(0, 2))
        maps.append(m)
    maps, target = torch.cat(maps), torch.cat(targets)
    n = len(maps)
    energy = share_sq / n - (share_sum / n).pow(2).sum(dim=1)
    keep = torch.sort(torch.argsort(energy, descending=True)[:head]).values

    w0 = composite[:, keep].reshape(len(fc), -1)
    if head < full:
        feats = maps[:, keep].reshape(n, -1)
        del maps
        mean, t_mean = feats.mean(0), target.mean(0)
        feats -= mean
        gram = (feats.T @ feats).double()
        gram.diagonal().add_(ridge * gram.diagonal().mean())
        resid = (target - t_mean) - feats @ w0.T
        w = w0.double() + torch.linalg.solve(gram, (feats.T @ resid).double()).T
        bias = t_mean.double() - mean.double() @ w.T
    else:
        w, bias = w0.double(), offset.double()

    state = {k: v for k, v in src.state_dict().items() if not k.startswith(("gdc.", "fc.", "head."))}
    state["head.0.weight"] = src.head[0].weight[keep]
    for name in ("weight", "bias", "running_mean", "running_var"):
        state[f"head.1.{name}"] = getattr(src.head[1], name)[keep]
    state["head.1.num_batches_tracked"] = src.head[1].num_batches_tracked
    state["fc.weight"] = w.float()
    # the readout has no bias of its own: the BatchNorm after it takes it into its running mean
    state["bn.running_mean"] = src.bn.running_mean - bias.float()
    dst.load_state_dict(state)
    return dst.eval()
