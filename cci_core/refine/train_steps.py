"""Pieces the pre-training and SCAN loops share: the step count of a number of epochs,
one optimiser step under an AMP grad scaler, and the operator's progress line (images/s,
time left)."""
from __future__ import annotations

import torch


def epoch_steps(epochs: float, n: int, batch_size: int) -> int:
    """Optimiser steps that draw ``epochs`` (may be fractional) times ``n`` images."""
    return max(1, int(round(epochs * n / batch_size)))


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   loss: torch.Tensor, sched=None) -> None:
    """Zero the gradients, back-propagate ``loss`` (scaled on CUDA), step, and advance
    ``sched`` when given."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    if sched is not None:
        sched.step()


def progress_line(stage: str, step: int, steps: int, images: int, seconds: float,
                  **values: float) -> str:
    """``"<stage> step 120/800: loss 4.1234, 1500 images/s, 40s, ~230s left"``.

    ``step`` counts finished steps, ``images`` the images through the network so far.
    """
    shown = "".join(f"{name} {value:.4f}, " for name, value in values.items())
    left = seconds / max(step, 1) * (steps - step)
    return (f"{stage} step {step}/{steps}: {shown}{images / max(seconds, 1e-9):.0f} images/s, "
            f"{seconds:.0f}s, ~{left:.0f}s left")
