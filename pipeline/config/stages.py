"""The ``decoder``, ``classifier`` and ``density`` sections: how each processing stage batches and runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Section

__all__ = ["ClassifierConfig", "DecoderConfig", "DensityConfig"]


class DecoderConfig(Section):
    """How sources become clips."""

    resize: Literal["model", "source"] = Field(
        "model", description="model: frames are resized to the model's short side before publishing (exactly the "
                             "resize the classifier would do, at a fraction of the bytes); source: full resolution")
    threads: int = Field(2, ge=1, le=64, description="files of an unpaced directory source decoded at once (each "
                                                     "its own stream; a paced directory plays one file after another)")


class ClassifierConfig(Section):
    """Batching and runtime of the classifier stage."""

    max_batch: int = Field(8, ge=1, le=1024, description="clips per forward pass, from any streams")
    max_wait_ms: int = Field(50, ge=0, le=60_000, description="wait this long for a batch to fill")
    threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads; None: torch's default")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")
    precision: Literal["fp32", "bf16", "fp16", "auto"] | None = Field(
        None, description="the model's arithmetic: None (default) the precision the bundle was fitted in, so "
                          "streamed scores equal `clipwatch score`'s; auto: bf16 + channels-last-3d on CPUs with "
                          "AMX or AVX-512-BF16 and on CUDA, fp32 elsewhere (scoring an fp32 bundle in bf16 changed "
                          "no verdict on the benchmark, see benchmarks/precision_detection.py)")
    thumbnail_size: int = Field(160, ge=0, le=1024, description="longest side of the JPEG thumbnail; 0: none; "
                                                                "none are made unless alerts.thumbnails_dir keeps them")
    thumbnail_quality: int = Field(80, ge=1, le=100)


class DensityConfig(Section):
    """Batching of the density stage and an optional override of the bundle's false-alarm rate."""

    max_batch: int = Field(64, ge=1, le=65_536)
    max_wait_ms: int = Field(10, ge=0, le=60_000)
    alpha: float | None = Field(None, gt=0.0, lt=1.0, description="false-alarm rate; None: the bundle's")
