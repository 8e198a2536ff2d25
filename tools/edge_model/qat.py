"""Quantisation-aware fine-tuning (QAT) of the student, simulating what full-INT8 TFLite does to it.

``edge-model convert`` quantises after training (PTQ): weights per output channel,
symmetric, to [-127, 127]; every op output per tensor, asymmetric, to [-128, 127]
with ranges from calibration images.  When that costs the student more than the
0.3 CFP-FF points a quantised bundle may lose, fine-tuning with the same rounding in the forward pass lets the
weights settle where rounding hurts less.  The simulation here follows the TFLite
graph of the student:

- weights: every Conv2d and the final Linear of the BatchNorm-folded network, per
  output channel (TFLite's CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED are all
  per-channel in our bundles), scale ``max|w| / 127`` - exactly PTQ's rule, so the
  converter later picks the same grid;
- activations: the output of each conv (after its fused ReLU6), each Inception
  concatenation, each residual sum and the embedding, with a moving min/max range
  (max-pool and pad keep their input's scale in TFLite, so they need none).

Gradients pass straight through the rounding (PyTorch's fake-quantise ops).  The
result is still a float network: :func:`strip_qat` removes the simulation and the
usual export + PTQ conversion follows, landing on the grid it was trained for.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .student import InceptionBlock, Student, fold_batchnorm


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 rounding of a weight (TFLite's per-channel scheme).
    ``bypass`` hands the weight on unrounded (reading out the float network under the simulation)."""

    bypass = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return weight
        dims = tuple(range(1, weight.ndim))
        scale = (weight.detach().abs().amax(dim=dims) / 127).clamp_min(1e-12).float()
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric int8 rounding of an activation with a tracked range.

    ``observing`` (calibration) records the running min/max over every batch, as
    TFLite's calibrator does, without rounding; afterwards training moves the range
    slowly (``momentum``) and evaluation uses it frozen.  With ``momentum=0`` training
    leaves the range alone too: only :func:`calibrate` sets it, so the grid trained on
    is the one post-training conversion will pick (its calibrator's min/max rule).
    """

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.observing = False
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def scale_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)  # zero must be exact
        scale = ((hi - lo) / 255).clamp_min(1e-8)
        zero = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int32)
        return scale.float(), zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and self.momentum > 0) or self.observing:
            with torch.no_grad():
                lo, hi = (v.float() for v in torch.aminmax(x.detach()))
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
                elif self.observing:
                    self.lo.copy_(torch.minimum(self.lo, lo))
                    self.hi.copy_(torch.maximum(self.hi, hi))
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
        if self.observing:
            return x
        scale, zero = self.scale_zero()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)


def prepare_qat(model: Student) -> Student:
    """A BatchNorm-folded copy of ``model`` with INT8 rounding simulated on weights and activations.

    A fake-quantiser goes wherever TFLite stores an int8 tensor: after each conv
    (+ folded BN + ReLU6, one fused TFLite op), in place of each Inception block's
    ``merge`` (the concatenation) and ``output`` (the residual ADD) identities, and
    in place of the folded final BatchNorm (the embedding).  They are modules, so
    their ranges are saved with the state dict; :func:`calibrate` sets them first.
    """
    model = fold_batchnorm(model)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant())
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.Conv2d):
            module.append(ActFakeQuant())
        elif isinstance(module, InceptionBlock):
            module.merge = ActFakeQuant()
            if module.residual:
                module.output = ActFakeQuant()
    model.bn = ActFakeQuant()
    model.qat = True
    return model


def fake_quantisers(model: nn.Module) -> list[ActFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActFakeQuant)]


@torch.no_grad()
def calibrate(model: Student, batches) -> None:
    """Set every activation range to the min/max over ``batches`` (normalised input tensors)."""
    quants = fake_quantisers(model)
    for q in quants:
        q.observing = True
        q.seen.fill_(False)
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for q in quants:
            q.observing = False
        model.train(was_training)


def strip_qat(model: Student) -> Student:
    """The float network under the simulation: weights as trained (unrounded), no quantisers.

    Built afresh and loaded from the state dict: a deep copy of a parametrised module
    shares its generated class with the original, and un-parametrising the copy would
    break the original.
    """
    if not getattr(model, "qat", False):
        return model
    quantisers = {name for name, m in model.named_modules() if isinstance(m, ActFakeQuant)}
    state = {}
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in quantisers:
            continue
        state[key.replace(".parametrizations.weight.original", ".weight")] = value.detach().cpu()
    plain = fold_batchnorm(Student(model.config))
    plain.load_state_dict(state)
    return plain.eval()
