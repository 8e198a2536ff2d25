"""Quantisation-aware fine-tuning of the student: the simulated rounding, where it sits, training and export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from edge_model.qat import (
    ActFakeQuant,
    WeightFakeQuant,
    calibrate,
    fake_quantisers,
    prepare_qat,
    strip_qat,
)
from edge_model.student import (
    InceptionBlock,
    Student,
    StudentConfig,
    export_onnx,
    fold_batchnorm,
)

from .test_student import TINY, _fixture_training_set


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = Student(StudentConfig(**TINY))
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_weight_rounding_is_tflite_per_channel_int8():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * torch.linspace(0.01, 2.0, 6).view(6, 1, 1, 1)
    q = WeightFakeQuant()(w)
    for c in range(6):
        scale = w[c].abs().max().item() / 127
        ref = np.clip(np.round(w[c].numpy() / scale), -127, 127) * scale
        np.testing.assert_allclose(q[c].numpy(), ref, rtol=1e-5, atol=1e-7)
        assert len(torch.unique(q[c])) <= 255
    # the largest weight is on the grid (up to float rounding of max / 127 * 127)
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)), rtol=1e-6, atol=0)


def test_activation_rounding_uses_the_calibrated_range():
    quant = ActFakeQuant()
    quant.observing = True
    quant(torch.tensor([0.5, 2.0]))
    quant(torch.tensor([1.0, 6.0]))  # running min/max over batches, as TFLite's calibrator
    quant.observing = False
    assert (quant.lo.item(), quant.hi.item()) == (0.5, 6.0)
    quant.eval()
    x = torch.linspace(-1, 7, 10_000)
    y = quant(x)
    assert len(torch.unique(y)) <= 256
    assert y.min().item() == 0.0  # zero is on the grid (the range is widened to hold it)
    assert abs(y.max().item() - 6.0) < 6.0 / 255
    scale, _ = quant.scale_zero()
    inside = (x >= 0) & (x <= 6)
    assert (y[inside] - x[inside]).abs().max().item() <= scale.item() / 2 + 1e-6
    quant(torch.tensor([100.0]))
    assert quant.hi.item() == 6.0  # frozen outside training


def _range_after_a_training_batch(momentum: float, batch: list[float]) -> tuple[float, float]:
    quant = ActFakeQuant(momentum=momentum)
    quant.observing = True
    quant(torch.tensor([-1.0, 2.0]))  # calibrated to [-1, 2]
    quant.observing = False
    quant.train()
    quant(torch.tensor(batch))
    return quant.lo.item(), quant.hi.item()


def test_a_frozen_range_stays_put_in_training_until_recalibrated():
    assert _range_after_a_training_batch(0.0, [-50.0, 50.0]) == (-1.0, 2.0)
    assert _range_after_a_training_batch(0.5, [-3.0, 4.0]) == (-2.0, 3.0)  # a moving range moves halfway


def test_rounding_sits_where_tflite_stores_int8_tensors():
    model = _tiny()
    qat = prepare_qat(model)
    convs = [m for m in qat.modules() if isinstance(m, nn.Conv2d)]
    blocks = [m for m in qat.modules() if isinstance(m, InceptionBlock)]
    residual = [b for b in blocks if b.residual]
    # one per conv op, per concatenation, per residual sum, and the embedding
    assert len(fake_quantisers(qat)) == len(convs) + len(blocks) + len(residual) + 1
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in qat.modules())
    # the original is untouched
    assert isinstance(model.bn, nn.BatchNorm1d) and not any(isinstance(m, ActFakeQuant) for m in model.modules())


def test_simulated_int8_is_close_to_float_but_rounded():
    model = _tiny()
    qat = prepare_qat(model)
    x = torch.randn(16, 3, 32, 32)
    calibrate(qat, [x[:8], x[8:]])
    with torch.no_grad():
        ref, sim = model.embed(x), torch.nn.functional.normalize(qat(x), dim=1)
    cos = (ref * sim).sum(1)
    assert cos.min().item() > 0.98
    assert cos.mean().item() < 0.99999  # something was rounded
    # stripping the simulation gives back the folded float network exactly
    stripped = strip_qat(qat)
    assert not any(isinstance(m, ActFakeQuant) for m in stripped.modules())
    with torch.no_grad():
        assert torch.allclose(stripped(x), fold_batchnorm(model)(x), atol=1e-5)


def test_qat_fine_tuning_trains_resumes_and_exports(tmp_path):
    from edge_model.train_student import load_student, train

    crop_set, targets, labels, classes = _fixture_training_set()
    crops = crop_set.crops
    config = StudentConfig(**TINY)
    init = tmp_path / "init.pt"
    torch.save(_tiny().state_dict(), init)
    common = dict(batch_size=8, lr=5e-3, heldout=0.0, seed=0, device="cpu", aug_strength=0.0, progress=False,
                  steps_per_epoch=4, qat=True)
    model, history = train(crops, targets, labels, classes, tmp_path / "run", config, epochs=6, init=init, **common)
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0], losses
    ranges = [(q.lo.item(), q.hi.item()) for q in fake_quantisers(model)]
    assert all(hi > lo for lo, hi in ranges)  # calibrated before training
    # a QAT run resumes with its ranges and weights
    resumed, more = train(crops, targets, labels, classes, tmp_path / "run", config, epochs=7, resume=True, **common)
    assert [h["epoch"] for h in more] == list(range(1, 8))
    # the checkpoint loads as the float network under the simulation
    reloaded = load_student(tmp_path / "run" / "last.pt")
    assert not any(isinstance(m, ActFakeQuant) for m in reloaded.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), strip_qat(resumed)(x), atol=1e-5)

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="strip_qat"):  # the exporter takes the plain network only
        export_onnx(resumed, tmp_path / "student.onnx")
    export_onnx(strip_qat(resumed), tmp_path / "student.onnx")
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    np.testing.assert_allclose(got, reloaded(x[:1]).detach().numpy(), atol=1e-4)


def test_student_does_not_import_qat():
    """qat builds on student, never the reverse: student.py owns the plain network (no import cycle)."""
    import ast
    import inspect

    from edge_model import student

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(student))):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
            imported.update(f"{'.' * node.level}{node.module or ''}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not any(name.endswith("qat") for name in imported), imported
