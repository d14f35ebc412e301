"""``TrainConfig``: every setting of a training run, validated, JSON-serialisable, with named presets.

The field defaults are the ``default`` preset: the CPU recipe that trains the shipped ``default`` model (a
width-12 3D ResNet-18 whose first convolution strides 2 in time, on 16-frame 80x80 clips) from scratch in about
seven minutes on two cores. What makes it train on every seed: motion-energy initialisation of ``conv1``
(``training.init``), label-mapping symmetries in pairs (``training.symmetry``), ``zero_init_residual``, linear
warm-up and gradient clipping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.data.pretrain import PRETRAIN_FACTORS, PRETRAIN_SYMMETRIES
from pipeline.errors import validation_problem
from pipeline.training.errors import TrainingError
from pipeline.training.symmetry import SYNTH_SYMMETRIES, check_symmetries
from pipeline.video.preprocess import KINETICS_MEAN, KINETICS_STD

FINETUNE = {
    "init": "base", "motion_init": False, "symmetries": {}, "paired_symmetries": False, "epochs": 30,
    "clips_per_video": 2, "short_side": 128, "crop": 128, "frame_step": 3, "lr": 1e-3, "warmup_epochs": 1.0,
    "backbone_lr_ratio": 0.5, "val_fraction": 0.0, "patience": None, "eval_every": 10,
}
"""Fine-tuning a user's classes: start from the shipped ``base`` backbone (its architecture, clip length and
normalisation; see ``pipeline/assets/models/README.md``), head re-initialised, no class-specific tables, the backbone
at half the learning rate, on 128x128 inputs (small actors keep more pixels) of every third frame (16 frames span
46, so a clip sees more of a slow motion; videos shorter than that are skipped and reported), two clips per video
per epoch and a cosine schedule that runs to its end, whose last epoch is kept: every training video is trained on
(a validation split of a small dataset is too small to choose an epoch by; ``--val-fraction`` still carves one).
Chosen on the default world (large and small actors) and its held-out motion families; the yard world only checked
the choice."""

PRETRAIN = {"init": "default", "symmetries": PRETRAIN_SYMMETRIES, "paired_symmetries": False,
            "factors": PRETRAIN_FACTORS, "epochs": 24, "eval_every": 4}
"""Pretraining the ``base`` backbone on the corpus of ``clipwatch synth --world pretrain`` (81 classes of combined
translation, rotation and scaling): the ``default`` recipe continued from the shipped ``default`` model (from scratch
the network stayed at chance for the first epochs on two cores), with the corpus's own symmetry tables applied
unpaired (a batch of distinct videos is worth more than pairs on 2000 videos) and a cross-entropy per motion factor
beside the 81-way one."""

PRESETS: dict[str, dict[str, Any]] = {
    "finetune": FINETUNE,
    "pretrain": PRETRAIN,
    "default": {},
    "default-v1": {"model_options": {"width": 16, "zero_init_residual": True}, "epochs": 40, "eval_every": 5},
    "smoke": {
        "model": "r3d-10",
        "model_options": {"width": 8, "zero_init_residual": True},
        "epochs": 2,
        "short_side": 48,
        "crop": 48,
    },
}
"""Named presets as overrides of the field defaults. ``default-v1`` is the first shipped default's recipe (width 16, no
temporal stride in ``conv1``, 40 epochs: slower, about 3 points less accuracy), now the shipped black-box surrogate;
``smoke`` is a seconds-long check."""

RESUME_FREE_FIELDS = frozenset({"out", "threads", "eval_every", "eval_batch_size", "keep_checkpoints", "device",
                                "init"})
"""Fields that may differ between a run and its resumption: they do not change the numbers it computes."""


class TrainConfig(BaseModel):
    """Settings of one training run (see the field descriptions); build one with :meth:`preset`."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    data: Path = Field(description="dataset root in the UCF101 layout (ucfTrainTestlist/ inside or beside it)")
    out: Path = Field(description="output folder: model, metrics.json, training_curve.png, checkpoints/")
    split: Literal[1, 2, 3] = 1

    init: str = Field("scratch", description="weights to start from: scratch, a shipped model's name, a model "
                                             "folder or a checkpoint file (see pipeline.training.transfer)")
    model: str = "r3d-18"
    model_options: dict[str, Any] = Field(
        default_factory=lambda: {"width": 12, "zero_init_residual": True, "conv1_t_stride": 2},
        description="keyword options of build_model (width, zero_init_residual, conv1_t_size, ...)",
    )
    motion_init: bool = Field(True, description="start the first conv as motion-energy filters (training.init)")
    motion_init_speed: float = Field(1.0, gt=0, description="preferred speed of those filters, pixels per frame")
    bn_momentum: float | None = Field(None, gt=0, le=1, description="BatchNorm momentum (None: PyTorch's 0.1)")

    clip_len: int = Field(16, ge=1, description="frames per clip")
    frame_step: int = Field(2, ge=1, description="take every frame_step-th frame")
    short_side: int = Field(80, ge=8, description="frames are resized so that the shorter side has this length")
    crop: int = Field(80, ge=8, description="square crop: random for training, centred for evaluation")
    fit: Literal["crop", "stretch"] = Field(
        "crop", description="how frames become square before the crop: crop keeps the aspect ratio (a wide frame "
                            "loses its sides), stretch squeezes the whole frame (pipeline.video.preprocess)")
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    eval_stride: int = Field(16, ge=1, description="source frames between the starts of evaluation clips")

    epochs: int = Field(80, ge=1)
    clips_per_video: int = Field(1, ge=1, description="clips drawn from each video per epoch (x2 when paired)")
    batch_size: int = Field(16, ge=2)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0, description="peak learning rate, reached at the end of the warm-up")
    weight_decay: float = Field(0.05, ge=0, description="applied to conv/linear weights, not to BN or biases")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum")
    warmup_epochs: float = Field(2.0, ge=0, description="linear warm-up from 0, then cosine decay")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="final learning rate as a fraction of lr")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (None: no clipping)")
    backbone_lr_ratio: float = Field(1.0, ge=0, le=1, description="learning rate of all but the head, as a "
                                                                   "fraction of lr (0: frozen backbone)")
    freeze_through: str | None = Field(None, min_length=1, description="keep the init's weights and BatchNorm "
                                                                       "statistics of every module up to and "
                                                                       "including this one (e.g. layer3): its "
                                                                       "features stay the pretrained ones")
    val_fraction: float = Field(0.0, ge=0, lt=0.5, description="training groups held out to pick the best epoch "
                                                                "(0: none; the test split is then reported as it goes)")
    patience: int | None = Field(None, ge=1, description="stop after this many validations without a better "
                                                          "validation clip accuracy (needs val_fraction)")

    loss: Literal["ce", "objectosphere"] = Field(
        "ce", description="ce: cross-entropy; objectosphere: also a penultimate feature norm >= xi for known clips "
                          "and -> 0 for outliers (pipeline.training.openset; needs outliers)")
    outliers: Literal["none", "auto"] = Field(
        "none", description="auto: outlier exposure with clips made from each batch (shuffled frames, spliced "
                            "classes), trained towards a uniform softmax")
    outlier_fraction: float = Field(0.5, gt=0, le=1, description="outliers per batch, as a fraction of its clips")
    objectosphere_weight: float = Field(0.25, ge=0, description="weight of the feature-norm terms, in units of xi^2")
    objectosphere_xi: float | None = Field(None, gt=0, description="minimum known feature norm (None: the mean "
                                                                   "norm of the first batch's known clips)")

    factors: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="factor tables {factor: {class: value}}: a cross-entropy per factor on the "
                                          "class probabilities summed within each value (pipeline.training.factors)")
    factor_weight: float = Field(1.0, ge=0, description="weight of the factor cross-entropies, summed")

    min_scale: float = Field(1.0, gt=0, le=1, description="zoom augmentation: each training clip is a random square "
                                                           "window of this to 1 times the fitted frames' short side, "
                                                           "resized to the crop (1: plain random crops)")
    brightness: float = Field(0.1, ge=0, le=1, description="max additive brightness change per clip, 0-1 units")
    contrast: float = Field(0.15, ge=0, lt=1, description="max relative contrast change per clip")
    temporal_jitter: bool = Field(True, description="random clip start (else the clip grid used for evaluation)")
    symmetries: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {name: dict(table) for name, table in SYNTH_SYMMETRIES.items()},
        description="label-mapping transforms applied with probability 1/2 (see pipeline.training.symmetry)",
    )
    paired_symmetries: bool = Field(
        True, description="each drawn clip comes with a transformed copy in the same batch (motion-only contrast)")

    seed: int = 0
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="where the model trains")
    threads: int | None = Field(2, ge=1, description="torch CPU threads (None: leave PyTorch's setting)")
    eval_every: int = Field(10, ge=1, description="evaluate every N epochs (and after the last): on the validation "
                                                  "groups with val_fraction, else on the test split")
    eval_batch_size: int = Field(64, ge=1)
    keep_checkpoints: int = Field(1, ge=1, description="epoch checkpoints kept on disk (newest)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.crop > self.short_side:
            raise ValueError(f"crop {self.crop} is larger than short_side {self.short_side}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        check_symmetries(self.symmetries)
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError("patience needs a validation split (val_fraction > 0)")
        if self.loss == "objectosphere" and self.outliers == "none":
            raise ValueError("loss objectosphere needs outliers (outliers: auto)")
        if self.factors and self.outliers != "none":
            raise ValueError("factors cannot be combined with outliers")
        if self.freeze_through is not None and self.init == "scratch":
            raise ValueError(f"freeze_through {self.freeze_through} keeps an init's weights: give --init, not scratch")
        if self.paired_symmetries and not self.symmetries:
            raise ValueError("paired_symmetries needs symmetries to pair with")
        if self.paired_symmetries and self.batch_size % 2:
            raise ValueError(f"paired_symmetries needs an even batch_size, got {self.batch_size}")
        return self

    @property
    def span(self) -> int:
        """Source frames one clip covers, first to last inclusive."""
        return (self.clip_len - 1) * self.frame_step + 1

    def preprocessing(self) -> dict[str, Any]:
        """The ``preprocessing`` block of the saved model's manifest (what ``pipeline.video.preprocess`` needs)."""
        return {"clip_len": self.clip_len, "frame_step": self.frame_step, "short_side": self.short_side,
                "crop": self.crop, "fit": self.fit, "mean": list(self.mean), "std": list(self.std)}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> TrainConfig:
        """The preset ``name`` with ``overrides`` (``data`` and ``out`` at least); one-line TrainingError if bad."""
        if name not in PRESETS:
            raise TrainingError(f"unknown training preset {name!r}; available: {', '.join(PRESETS)}")
        return cls.parse({**PRESETS[name], **overrides})

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> TrainConfig:
        """Validate ``fields``; every problem is reported on one line as a TrainingError."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise TrainingError(f"invalid training config: {validation_problem(exc)}") from None

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields (other than RESUME_FREE_FIELDS) whose values differ between ``self`` and ``other``."""
        mine, theirs = self.to_json(), other.to_json()
        return [key for key in mine if key not in RESUME_FREE_FIELDS and mine[key] != theirs.get(key)]
