"""Attacks against a tiny R3D trained in-test on a motion-direction task: framing, universal, black-box, FGSM, PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.attacks import (
    FramingAttack,
    Normalize,
    blackbox_framing,
    fgsm,
    from_uint8,
    load_attacked_clips,
    pgd,
    save_attacked_clips,
)
from pipeline.attacks.common import predict
from pipeline.attacks.frame import apply_frame
from pipeline.models import build_model

torch.set_num_threads(1)

CLASSES = 4
LENGTH, SIZE = 8, 32
WIDTH = 3
PGD_EPS = 16 / 255
NORMALIZE = Normalize((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))
DIRECTIONS = [(0, 2), (0, -2), (2, 0), (-2, 0)]  # (dy, dx) per frame: right, left, down, up


def motion_clips(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of a bright square moving in the class's direction over static noise, as uint8 → [0, 1] pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    frames = np.empty((count, LENGTH, SIZE, SIZE, 3), np.uint8)
    for index, label in enumerate(labels):
        background = rng.integers(60, 140, (SIZE, SIZE, 3))
        top, left = rng.integers(8, 14, 2)
        dy, dx = DIRECTIONS[label]
        for t in range(LENGTH):
            frame = background.copy()
            frame[top + dy * t : top + dy * t + 10, left + dx * t : left + dx * t + 10] = 200
            frames[index, t] = frame
    return from_uint8(frames), torch.as_tensor(labels)


def train(clips: torch.Tensor, labels: torch.Tensor, seed: int, steps: int = 40) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("r3d-10", CLASSES, width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(clips), (16,), generator=generator)
        loss = F.cross_entropy(model(NORMALIZE(clips[index])), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, clips, NORMALIZE) == labels).float().mean().item()


@pytest.fixture(scope="module")
def task():
    train_clips, train_labels = motion_clips(96, seed=0)
    test_clips, test_labels = motion_clips(32, seed=1)
    model = train(train_clips, train_labels, seed=0)
    assert accuracy(model, test_clips, test_labels) >= 0.9, "the tiny model must learn the task for attacks to matter"
    return model, train_clips, train_labels, test_clips, test_labels


@pytest.fixture(scope="module")
def surrogate(task):
    _, train_clips, train_labels, test_clips, test_labels = task
    model = train(train_clips, train_labels, seed=1)
    assert accuracy(model, test_clips, test_labels) >= 0.9
    return model


@pytest.fixture(scope="module")
def framed(task):
    """Per-clip untargeted framing of the test clips, one frame per time step."""
    model, _, _, clips, labels = task
    attack = FramingAttack(width=WIDTH, steps=20, per_frame=True)
    return attack, attack.attack_batch(model, clips, labels, NORMALIZE)


@pytest.fixture(scope="module")
def projected(task):
    """Untargeted PGD (ε = 16/255, 10 steps) of the test clips."""
    model, _, _, clips, labels = task
    return pgd(model, clips, labels, NORMALIZE, eps=PGD_EPS, step_size=PGD_EPS / 4, steps=10, seed=0)


def interior(clips: torch.Tensor, width: int = WIDTH) -> torch.Tensor:
    return clips[..., width:-width, width:-width]


def border_values(clips: torch.Tensor, width: int = WIDTH) -> torch.Tensor:
    mask = torch.ones(SIZE, SIZE, dtype=torch.bool)
    mask[width:-width, width:-width] = False
    return clips[..., mask]


def on_grid(clips: torch.Tensor) -> bool:
    return torch.equal(clips, torch.round(clips * 255) / 255)


def test_per_clip_framing_replaces_only_the_border_and_fools_the_model(task, framed):
    model, _, _, clips, labels = task
    _, adversarial = framed

    assert adversarial.shape == clips.shape
    assert torch.equal(interior(adversarial), interior(clips))
    border = border_values(adversarial)
    assert 0 <= border.min() and border.max() <= 1 and on_grid(adversarial)
    assert not torch.equal(border, border_values(clips))
    assert not torch.equal(border[:, :, 0], border[:, :, 1]), "per_frame=True learns a frame per time step"
    assert accuracy(model, adversarial, labels) <= 0.25


def test_shared_frame_is_constant_over_time_and_fools_the_model(task):
    model, _, _, clips, labels = task
    adversarial = FramingAttack(width=WIDTH, steps=20, per_frame=False).attack_batch(model, clips, labels, NORMALIZE)

    border = border_values(adversarial)
    assert torch.equal(border, border[:, :, :1].expand_as(border))
    assert torch.equal(interior(adversarial), interior(clips))
    assert accuracy(model, adversarial, labels) <= 0.5


def test_frame_width_is_respected():
    clips = torch.full((2, 3, LENGTH, SIZE, SIZE), 0.5)
    framed = apply_frame(clips, torch.zeros(3, 1, SIZE, SIZE), width=2)
    changed = (framed != clips).any(dim=(0, 1, 2))
    expected = torch.ones(SIZE, SIZE, dtype=torch.bool)
    expected[2:-2, 2:-2] = False
    assert torch.equal(changed, expected)


def test_targeted_framing_reaches_the_target(task):
    model, _, _, clips, labels = task
    targets = (labels + 1) % CLASSES
    attack = FramingAttack(width=WIDTH, steps=20, targeted=True)
    adversarial = attack.attack_batch(model, clips, targets, NORMALIZE)

    hit_rate = (predict(model, adversarial, NORMALIZE) == targets).float().mean().item()
    assert hit_rate >= 0.7
    assert torch.equal(interior(adversarial), interior(clips))


def test_universal_frame_lowers_accuracy_on_held_out_clips(task):
    model, train_clips, train_labels, test_clips, test_labels = task
    frame = FramingAttack(width=WIDTH, per_frame=True).fit_universal(
        model, train_clips, train_labels, NORMALIZE, epochs=3, batch_size=16, progress=False
    )

    assert frame.pixels.shape == (3, LENGTH, SIZE, SIZE) and frame.per_frame
    assert torch.count_nonzero(interior(frame.pixels)) == 0
    assert frame.info["mode"] == "universal" and frame.info["clips_per_epoch"] == len(train_clips)
    noise = torch.rand(3, LENGTH, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    random_frame = apply_frame(test_clips, noise, WIDTH)
    assert accuracy(model, random_frame, test_labels) >= 0.9, "a random border alone barely matters"
    assert accuracy(model, frame.apply(test_clips), test_labels) <= 0.5


def test_universal_frame_from_a_loader_of_minibatches(task):
    model, train_clips, train_labels, test_clips, _ = task
    loader = list(zip(train_clips[:32].split(8), train_labels[:32].split(8), strict=True))
    frame = FramingAttack(width=WIDTH, per_frame=False, seed=3).fit_universal(model, loader, None, NORMALIZE, epochs=2)

    assert frame.pixels.shape == (3, 1, SIZE, SIZE) and not frame.per_frame
    assert frame.info["clips_per_epoch"] == 32
    assert torch.equal(interior(frame.apply(test_clips)), interior(test_clips))


def test_blackbox_framing_learns_on_the_surrogate_and_returns_clips_for_the_target(task, surrogate):
    model, train_clips, train_labels, test_clips, test_labels = task
    attack = FramingAttack(width=WIDTH, seed=0)
    adversarial = blackbox_framing(
        surrogate, test_clips, test_labels, NORMALIZE, attack=attack,
        train_clips=train_clips, train_labels=train_labels, epochs=3, batch_size=16,
    )

    expected = attack.fit_universal(surrogate, train_clips, train_labels, NORMALIZE, epochs=3, batch_size=16)
    assert torch.equal(adversarial, expected.apply(test_clips))
    assert torch.equal(interior(adversarial), interior(test_clips))
    assert accuracy(surrogate, adversarial, test_labels) <= 0.6, "the frame must work on the model it was learned on"
    assert 0.0 <= accuracy(model, adversarial, test_labels) <= 1.0

    per_clip = blackbox_framing(surrogate, test_clips[:4], test_labels[:4], NORMALIZE,
                                attack=FramingAttack(width=WIDTH, steps=3), universal=False)
    direct = FramingAttack(width=WIDTH, steps=3).attack_batch(surrogate, test_clips[:4], test_labels[:4], NORMALIZE)
    assert torch.equal(per_clip, direct)


def test_fgsm_and_pgd_stay_in_the_eps_ball_and_lower_accuracy(task, projected):
    model, _, _, clips, labels = task
    fast = fgsm(model, clips, labels, NORMALIZE, eps=PGD_EPS)

    for adversarial in (fast, projected):
        assert (adversarial - clips).abs().max() <= PGD_EPS + 1e-6
        assert adversarial.min() >= 0 and adversarial.max() <= 1 and on_grid(adversarial)
    fgsm_accuracy, pgd_accuracy = accuracy(model, fast, labels), accuracy(model, projected, labels)
    assert fgsm_accuracy <= 0.5
    assert pgd_accuracy <= fgsm_accuracy


def test_targeted_pgd_reaches_the_target(task):
    model, _, _, clips, labels = task
    targets = (labels + 2) % CLASSES
    adversarial = pgd(model, clips, targets, NORMALIZE, eps=PGD_EPS, step_size=PGD_EPS / 4, steps=10, targeted=True)
    assert (adversarial - clips).abs().max() <= PGD_EPS + 1e-6
    assert (predict(model, adversarial, NORMALIZE) == targets).float().mean().item() >= 0.6


def test_attacks_still_fool_the_model_after_uint8_storage(task, framed, projected, tmp_path):
    model, _, _, _, labels = task
    attack, framed_clips = framed

    for name, adversarial, params in (("framing", framed_clips, attack.params()), ("pgd", projected, {"eps": PGD_EPS})):
        path = save_attacked_clips(tmp_path / name, adversarial, attack=name, params=params, labels=labels,
                                   source="motion:1")
        stored = load_attacked_clips(path)
        reloaded = stored.clips()
        assert torch.equal(reloaded, adversarial), "attacks return clips exactly representable as uint8"
        assert torch.equal(predict(model, reloaded, NORMALIZE), predict(model, adversarial, NORMALIZE))
        assert accuracy(model, reloaded, labels) <= 0.5
        assert stored.labels == labels.tolist() and stored.attack == name


def test_attacks_are_deterministic_for_a_seed(task):
    model, _, _, clips, labels = task
    clips, labels = clips[:4], labels[:4]
    frame_runs = [FramingAttack(width=WIDTH, steps=4, seed=seed).attack_batch(model, clips, labels, NORMALIZE)
                  for seed in (7, 7, 8)]
    pgd_runs = [pgd(model, clips, labels, NORMALIZE, eps=8 / 255, steps=2, seed=seed) for seed in (7, 7, 8)]
    for first, again, other in (frame_runs, pgd_runs):
        assert torch.equal(first, again)
        assert not torch.equal(first, other)


def test_more_steps_never_make_a_clip_worse(task):
    model, _, _, clips, labels = task
    clips, labels = clips[:6], labels[:6]

    def true_label_loss(adversarial):
        with torch.no_grad():
            return F.cross_entropy(model(NORMALIZE(adversarial)), labels, reduction="none")

    start = FramingAttack(width=WIDTH, steps=0).attack_batch(model, clips, labels, NORMALIZE)
    later = FramingAttack(width=WIDTH, steps=8).attack_batch(model, clips, labels, NORMALIZE)
    assert torch.all(true_label_loss(later) >= true_label_loss(start) - 1e-5)
    assert true_label_loss(later).mean() > true_label_loss(start).mean()


def test_attacks_leave_the_model_as_they_found_it(task):
    model, _, _, clips, labels = task
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    try:
        FramingAttack(width=WIDTH, steps=2).attack_batch(model, clips[:4], labels[:4], NORMALIZE)
        FramingAttack(width=WIDTH).fit_universal(model, clips[:8], labels[:8], NORMALIZE, epochs=1, batch_size=4)
        fgsm(model, clips[:4], labels[:4], NORMALIZE)
        pgd(model, clips[:4], labels[:4], NORMALIZE, steps=2)
        assert model.training, "the caller's train/eval mode is restored"
        assert all(param.requires_grad and param.grad is None for param in model.parameters())
        after = model.state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before), "weights and BN statistics untouched"
    finally:
        model.eval()
