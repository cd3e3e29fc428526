"""Training a registered architecture on the IDC patches, with choices made on validation only.

:func:`train` is a generator (like ``analyze``): it yields :class:`EpochReport` after every
epoch and returns the :class:`TrainingResult`. Then :func:`finish` calibrates on validation
(temperature, threshold maximising balanced accuracy, the ≥ 0.90 sensitivity operating point),
scores the test patients once, and writes the weights and card.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiviewer.core.atomic import atomic_write_bytes
from wsiviewer.core.model.colour import ColourReference
from wsiviewer.core.model.networks import build_model
from wsiviewer.core.model.predictor import device_label
from wsiviewer.core.model.weights import write_model
from wsiviewer.training.dataset import PatchSet, PatientSplit, iter_batches
from wsiviewer.training.idc import DATASET_MPP, PATCH_SIZE
from wsiviewer.training.metrics import (
    best_balanced_accuracy_threshold,
    bootstrap_intervals,
    classification_metrics,
    fit_platt,
    roc_auc,
    sensitivity_operating_point,
)

#: Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class TrainingSettings:
    architecture: str = "cancernet"
    architecture_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    #: Stop when validation ROC AUC has not improved for this many epochs.
    patience: int = 5
    #: Stain jitter: each of H, E scaled by 1 ± this and shifted by ± this / 4 (OD units).
    stain_jitter: float = 0.05
    #: Brightness and contrast each scaled by 1 ± this (0: off).
    brightness_contrast: float = 0.0
    #: HSV jitter: hue shifted by ± this / 10 of the circle, saturation scaled by 1 ± this.
    hsv_jitter: float = 0.0
    #: Fraction of patches JPEG-compressed at a random quality from 50 to 95 (0: off).
    jpeg_probability: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    validation_auc: float
    validation_loss: float
    seconds: float
    best: bool


@dataclass
class TrainingResult:
    model: nn.Module
    settings: TrainingSettings
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    history: list[EpochReport] = field(default_factory=list)
    best_epoch: int = 0


#: JPEG qualities of the compression augmentation, inclusive.
JPEG_QUALITIES = (50, 95)


def augment(
    batch: torch.Tensor,
    generator: torch.Generator,
    stain_jitter: float,
    brightness_contrast: float = 0.0,
    hsv_jitter: float = 0.0,
    jpeg_probability: float = 0.0,
) -> torch.Tensor:
    """JPEG compression, flips, 90° rotations, H&E stain, brightness, contrast and HSV jitter
    on ``(N, 3, H, W)`` floats in [0, 1]."""
    n = batch.shape[0]
    if jpeg_probability > 0:
        batch = _jpeg(batch, generator, jpeg_probability)
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
    turns = torch.randint(0, 4, (n,), generator=generator)
    rotated = [torch.rot90(batch, k, dims=(2, 3)) for k in range(4)]
    batch = torch.stack(rotated)[turns, torch.arange(n)]
    if stain_jitter > 0:
        od = -torch.log(batch.clamp(min=1 / 255))  # optical density
        hed = torch.einsum("nchw,cd->ndhw", od, _HED_FROM_RGB)
        scale = 1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * stain_jitter
        shift = (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * stain_jitter / 4
        hed = hed * scale + shift
        od = torch.einsum("ndhw,dc->nchw", hed, _RGB_FROM_HED)
        batch = torch.exp(-od).clamp(0, 1)
    if brightness_contrast > 0:
        brightness = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * brightness_contrast
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * brightness_contrast
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast + mean * brightness).clamp(0, 1)
    if hsv_jitter > 0:
        batch = _hsv_jitter(batch, generator, hsv_jitter)
    return batch


def _jpeg(batch: torch.Tensor, generator: torch.Generator, probability: float) -> torch.Tensor:
    """A random ``probability`` of the patches JPEG-compressed (imagecodecs' libjpeg) at a
    random quality in :data:`JPEG_QUALITIES`: the artefacts of a scanner's compressed levels."""
    import imagecodecs

    n = batch.shape[0]
    chosen = torch.rand(n, generator=generator) < probability
    qualities = torch.randint(JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1, (n,), generator=generator)
    if not chosen.any():
        return batch
    pixels = (batch.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    for index in np.flatnonzero(chosen.numpy()):
        encoded = imagecodecs.jpeg8_encode(pixels[index], level=int(qualities[index]))
        pixels[index] = imagecodecs.jpeg8_decode(encoded)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)


def _hsv_jitter(batch: torch.Tensor, generator: torch.Generator, amount: float) -> torch.Tensor:
    """Hue shifted by up to ± ``amount`` / 10 of the colour circle and saturation scaled by
    1 ± ``amount``, per patch (scikit-image's HSV conversions)."""
    from skimage.color import hsv2rgb, rgb2hsv

    n = batch.shape[0]
    hue = (torch.rand(n, generator=generator) * 2 - 1).numpy() * amount / 10
    saturation = 1 + (torch.rand(n, generator=generator) * 2 - 1).numpy() * amount
    hsv = rgb2hsv(batch.permute(0, 2, 3, 1).numpy(), channel_axis=-1)
    hsv[..., 0] = (hsv[..., 0] + hue[:, None, None]) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation[:, None, None], 0.0, 1.0)
    rgb = hsv2rgb(hsv, channel_axis=-1).astype(np.float32)
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()


def _to_float(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    pixels: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    model.eval()
    out = []
    for index in iter_batches(len(pixels), batch_size):
        x = (_to_float(pixels[index], device) - mean) / std
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def train(
    train_set: PatchSet,
    validation_set: PatchSet | None,
    settings: TrainingSettings,
    device: torch.device,
    *,
    checkpoint: Path | None = None,
) -> Generator[EpochReport, None, TrainingResult]:
    """Train with class-weighted cross-entropy, AdamW and a one-cycle schedule.

    Early stopping keeps the weights of the epoch with the best validation ROC AUC. Without a
    validation set every epoch runs and the last one's weights are kept (its validation AUC
    and loss are NaN): the final model of a cross-validated recipe, whose number of epochs was
    chosen on the folds.

    With ``checkpoint``, everything the run needs to go on (weights, optimiser, schedule,
    random states, history) is written there, atomically, after every epoch, and a run that
    finds the file resumes after its last epoch: an interrupted run loses one epoch at most.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_model(settings.architecture, settings.architecture_args).to(device)
    floats = train_set.pixels.reshape(-1, 3).astype(np.float64) / 255.0
    mean_values = floats.mean(axis=0)
    std_values = floats.std(axis=0)
    trainer = _Trainer.start(model, train_set, settings, device, mean_values, std_values)
    result = TrainingResult(model, settings, tuple(mean_values), tuple(std_values))
    state = _RunState(best_auc=-1.0, best_state=copy.deepcopy(model.state_dict()))
    if checkpoint is not None and checkpoint.is_file():
        state = _resume(checkpoint, trainer, result, rng, generator)
    for epoch in range(len(result.history) + 1, settings.epochs + 1):
        if state.stale >= settings.patience:
            break
        start = time.perf_counter()
        train_loss = trainer.train_epoch(train_set, rng, generator)
        if validation_set is None:
            validation_auc, validation_loss = math.nan, math.nan
            improved = True
        else:
            validation_auc, validation_loss = trainer.validate(validation_set)
            improved = validation_auc > state.best_auc
        if improved:
            state.best_auc, state.stale = validation_auc, 0
            state.best_state = copy.deepcopy(model.state_dict())
            result.best_epoch = epoch
        else:
            state.stale += 1
        report = EpochReport(
            epoch,
            settings.epochs,
            train_loss,
            validation_auc,
            validation_loss,
            time.perf_counter() - start,
            improved,
        )
        result.history.append(report)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, trainer, result, state, rng, generator)
        yield report
    model.load_state_dict(state.best_state)
    model.eval()
    return result


@dataclass
class _RunState:
    """Early stopping's memory: the best validation AUC, its weights, epochs since."""

    best_auc: float
    best_state: dict[str, torch.Tensor]
    stale: int = 0


def _save_checkpoint(
    path: Path,
    trainer: _Trainer,
    result: TrainingResult,
    state: _RunState,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> None:
    payload = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "best_state": state.best_state,
        "best_auc": state.best_auc,
        "stale": state.stale,
        "best_epoch": result.best_epoch,
        "history": [list(asdict(report).values()) for report in result.history],
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _resume(
    path: Path,
    trainer: _Trainer,
    result: TrainingResult,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> _RunState:
    """Load a checkpoint written by :func:`_save_checkpoint` into the run."""
    payload = torch.load(path, map_location=trainer.device, weights_only=True)
    trainer.model.load_state_dict(payload["model"])
    trainer.optimizer.load_state_dict(payload["optimizer"])
    trainer.schedule.load_state_dict(payload["schedule"])
    trainer.scaler.load_state_dict(payload["scaler"])
    rng.bit_generator.state = json.loads(payload["numpy_rng"])
    generator.set_state(payload["torch_generator"])
    torch.set_rng_state(payload["torch_rng"])
    result.best_epoch = int(payload["best_epoch"])
    result.history = [EpochReport(*values) for values in payload["history"]]
    return _RunState(float(payload["best_auc"]), payload["best_state"], int(payload["stale"]))


@dataclass
class _Trainer:
    """A model and what trains it: normalisation, loss, optimiser, schedule, mixed precision."""

    model: nn.Module
    settings: TrainingSettings
    device: torch.device
    #: ``(1, 3, 1, 1)`` channel mean and std of the training pixels in [0, 1], on ``device``.
    mean: torch.Tensor
    std: torch.Tensor
    #: Per-class loss weights (balanced classes), on the CPU for the validation loss.
    class_weights: torch.Tensor
    loss_fn: nn.CrossEntropyLoss
    optimizer: torch.optim.AdamW
    schedule: torch.optim.lr_scheduler.OneCycleLR
    scaler: torch.amp.GradScaler
    #: float16 autocast and a gradient scaler, on CUDA only.
    use_amp: bool
    labels: torch.Tensor

    @classmethod
    def start(
        cls,
        model: nn.Module,
        train_set: PatchSet,
        settings: TrainingSettings,
        device: torch.device,
        mean_values: np.ndarray,
        std_values: np.ndarray,
    ) -> _Trainer:
        mean = torch.tensor(mean_values, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(std_values, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        counts = np.bincount(train_set.labels, minlength=2).astype(np.float64)
        weights = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32)
        loss_fn = nn.CrossEntropyLoss(weight=weights.to(device))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        steps = math.ceil(len(train_set) / settings.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.learning_rate, total_steps=settings.epochs * steps
        )
        use_amp = device.type == "cuda"
        return cls(
            model=model,
            settings=settings,
            device=device,
            mean=mean,
            std=std,
            class_weights=weights,
            loss_fn=loss_fn,
            optimizer=optimizer,
            schedule=schedule,
            scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
            use_amp=use_amp,
            labels=torch.from_numpy(train_set.labels),
        )

    def train_epoch(
        self, train_set: PatchSet, rng: np.random.Generator, generator: torch.Generator
    ) -> float:
        """One pass over the shuffled, augmented training set; the mean loss per patch."""
        settings, device = self.settings, self.device
        self.model.train()
        total_loss = 0.0
        for index in iter_batches(len(train_set), settings.batch_size, rng):
            if len(index) < 2:
                continue  # batch norm cannot train on a single patch
            x = _to_float(train_set.pixels[index], torch.device("cpu"))
            x = augment(
                x,
                generator,
                settings.stain_jitter,
                settings.brightness_contrast,
                settings.hsv_jitter,
                settings.jpeg_probability,
            )
            x = ((x.to(device) - self.mean) / self.std).contiguous(
                memory_format=torch.channels_last
            )
            y = self.labels[index].to(device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                loss = self.loss_fn(self.model(x), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.step()
            total_loss += float(loss.detach()) * len(index)
        return total_loss / len(train_set)

    def validate(self, validation_set: PatchSet) -> tuple[float, float]:
        """Validation ROC AUC and loss."""
        logits = predict_logits(self.model, validation_set.pixels, self.mean, self.std, self.device)
        validation_auc = roc_auc(validation_set.labels, _softmax(logits)[:, 1])
        # The same class-weighted loss as training, so the two curves are comparable.
        validation_loss = float(
            nn.functional.cross_entropy(
                torch.from_numpy(logits),
                torch.from_numpy(validation_set.labels),
                weight=self.class_weights,
            )
        )
        return validation_auc, validation_loss


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def finish(
    result: TrainingResult,
    validation_set: PatchSet,
    test_set: PatchSet,
    split: PatientSplit,
    out_dir: Path,
    *,
    name: str,
    device: torch.device,
    default: bool = False,
    training_summary: dict[str, Any] | None = None,
    colour: ColourReference | None = None,
) -> Path:
    """Calibrate and choose on validation, score test once, write weights, card and split.

    With ``colour``, the parts were standardised to that reference (patient by patient), and
    the card tells the analysis to do the same to every slide.

    Calibration is Platt scaling (a temperature and a bias on the IDC log-odds), which also
    undoes the shift that class-weighted training puts into the log-odds. The probabilities
    behind every choice and metric come from the written model through the
    :class:`~wsiviewer.core.model.predictor.Predictor` on the CPU, the path analysis and
    ``wsiviewer evaluate`` take, so the card's figures are theirs. Returns the card's path.
    """
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.predictor import Predictor

    mean = torch.tensor(result.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(result.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    validation_logits = predict_logits(result.model, validation_set.pixels, mean, std, device)
    temperature, bias = fit_platt(validation_logits, validation_set.labels)
    split_name = f"{name}-split.json"
    split.save(out_dir / split_name)
    card = _card(
        result,
        name=name,
        split_name=split_name,
        temperature=temperature,
        bias=bias,
        device=device,
        default=default,
        training_summary=training_summary,
    )
    if colour is not None:
        card["colour"] = colour.to_dict()
    model = result.model.cpu()
    predictor = Predictor(ModelCard.from_file(write_model(model, out_dir, card)), device="cpu")
    validation_p = predictor.predict(validation_set.pixels)
    threshold = round(best_balanced_accuracy_threshold(validation_set.labels, validation_p), 6)
    sensitive = round(sensitivity_operating_point(validation_set.labels, validation_p, 0.9), 6)
    # Every choice is made: the test patients are scored once.
    test_p = predictor.predict(test_set.pixels)
    metrics = {
        "validation": _part_metrics(validation_set, validation_p, threshold),
        "test": _part_metrics(test_set, test_p, threshold),
    }
    card["threshold"] = threshold
    card["operating_points"] = {"balanced_accuracy": threshold, "sensitivity_0.90": sensitive}
    card["metrics"] = metrics
    return write_model(model, out_dir, card)


def _card(
    result: TrainingResult,
    *,
    name: str,
    split_name: str,
    temperature: float,
    bias: float,
    device: torch.device,
    default: bool,
    training_summary: dict[str, Any] | None,
) -> dict[str, Any]:
    """The card of a trained model, calibrated; its threshold, operating points and metrics
    are placeholders until they are chosen and measured."""
    return {
        "name": name,
        "version": "0.1.0",
        "architecture": result.settings.architecture,
        "architecture_args": dict(result.settings.architecture_args),
        "input_size": PATCH_SIZE,
        "input_mpp": DATASET_MPP,
        "normalization": {"mean": list(result.mean), "std": list(result.std)},
        "classes": ["non-IDC", "IDC"],
        "threshold": 0.5,  # chosen on validation once the calibrated model is written
        "temperature": round(temperature, 6),
        "logit_bias": round(bias, 6),
        "calibration": "Platt scaling on validation: P(IDC) = sigmoid(log-odds / temperature "
        "+ logit_bias)",
        "operating_points": {},
        "training_data": {
            "dataset": "IDC breast histology patches (Janowczyk & Madabhushi 2016), 50×50 px "
            "at ≈4 µm/px",
            **(training_summary or {}),
        },
        "split": split_name,
        "metrics": {},
        "training": _training_record(result, device),
        "intended_use": "Research use only, not for diagnosis: flags regions of possible IDC "
        "in H&E breast tissue for a pathologist to review.",
        "default": default,
    }


def _training_record(result: TrainingResult, device: torch.device) -> dict[str, Any]:
    """How the model was trained, epoch by epoch (the evaluation report plots it)."""
    return {
        "settings": result.settings.__dict__,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "device": device_label(device),
        "cpu_threads": torch.get_num_threads(),
        "epoch_seconds": [round(r.seconds, 1) for r in result.history],
        "train_loss_by_epoch": [round(r.train_loss, 5) for r in result.history],
        "validation_loss_by_epoch": [round(r.validation_loss, 5) for r in result.history],
        "validation_auc_by_epoch": [round(r.validation_auc, 5) for r in result.history],
    }


def _part_metrics(part: PatchSet, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Metrics of one part of the split at ``threshold``, with patient-bootstrap intervals."""
    return {
        **classification_metrics(part.labels, scores, threshold),
        "patients": len(set(part.patients.tolist())),
        "patches": len(part.labels),
        "intervals_95": bootstrap_intervals(part.labels, scores, part.patients, threshold),
    }
