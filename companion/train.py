"""One training loop for every experiment in the book.

``train(model, batches, steps=...)`` seeds everything, runs AdamW with warm-up and cosine decay,
clips gradients, evaluates every ``eval_every`` steps, shows a ``tqdm.auto`` progress bar, and returns
a :class:`History` that :func:`companion.plot.plot_history` draws.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from companion.device import best_device
from companion.seed import seed_everything

Batch = tuple[torch.Tensor, ...]


@dataclass
class History:
    """What happened during a run: the training loss at every step and the periodic evaluations."""

    name: str = ""
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def final(self, metric: str = "loss") -> float:
        """The last evaluation of ``metric`` (or the last training loss if there was no evaluation)."""
        if metric in self.eval_metrics and self.eval_metrics[metric]:
            return self.eval_metrics[metric][-1]
        if metric == "loss" and self.train_loss:
            return self.train_loss[-1]
        raise KeyError(f"no value recorded for {metric!r}")

    def __repr__(self) -> str:  # no timings: the repr appears in stored notebook outputs
        last = {k: round(v[-1], 4) for k, v in self.eval_metrics.items() if v}
        return f"History(name={self.name!r}, steps={len(self.steps)}, final_eval={last})"


def next_token_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Default loss: ``batch = (inputs, targets)``; cross-entropy of ``model(inputs)`` against targets.

    ``model(inputs)`` returns logits ``(..., classes)``; ``targets`` has the leading shape of the logits.
    """
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def learning_rate(step: int, *, steps: int, lr: float, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    return batch


def train(
    model: torch.nn.Module,
    batches: Callable[[torch.Generator], Batch],
    *,
    steps: int,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = next_token_loss,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    warmup: int = 0,
    schedule: str = "cosine",
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    name: str = "",
    stop: Callable[[Mapping[str, float]], bool] | None = None,
) -> History:
    """Train ``model`` for ``steps`` steps of AdamW and return its :class:`History`.

    ``batches(generator)`` returns one batch (a tuple of tensors) and must draw its randomness from
    the ``torch.Generator`` it is given, which is seeded from ``seed``: the same seed gives the same
    batches. ``loss_fn(model, batch)`` returns a scalar loss. ``evaluate(model)`` returns a mapping
    of metric name to value; it runs under ``torch.no_grad()`` in eval mode every ``eval_every``
    steps and after the last step; if ``stop(metrics)`` returns True after an evaluation, training
    ends there (for example ``stop=lambda m: m["accuracy"] >= 0.99``). The model is moved to
    ``device`` (default: the best device here).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be None or a positive int, got {eval_every!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    device = torch.device(device) if device is not None else best_device()
    generator = seed_everything(seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History(name=name)

    def run_eval(step: int) -> bool:
        """Evaluate, record, and say whether to stop."""
        if evaluate is None:
            return False
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train()
        history.eval_steps.append(step)
        for key, value in metrics.items():
            history.eval_metrics.setdefault(key, []).append(float(value))
        return stop is not None and bool(stop(metrics))

    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc=name or "training", disable=not progress, leave=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps=steps, lr=lr, warmup=warmup, schedule=schedule)
        batch = _to(batches(generator), device)
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        history.steps.append(step + 1)
        history.train_loss.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step + 1 == steps:
            run_eval(steps)
        elif eval_every is not None and (step + 1) % eval_every == 0 and run_eval(step + 1):
            break
    bar.close()
    history.seconds = time.perf_counter() - start
    return history
