"""companion.train: one training loop, seeded, scheduled, evaluated, stoppable."""

import math

import pytest
import torch
from torch import nn

from companion import train as train_module
from companion.train import History, learning_rate, next_token_loss, train

CLASSES, FEATURES = 3, 4
TRUE_WEIGHTS = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(123))


def batches(generator: torch.Generator):
    """A linearly separable classification problem: the class is the argmax of a fixed projection."""
    x = torch.randn(32, FEATURES, generator=generator)
    return x, (x @ TRUE_WEIGHTS).argmax(dim=-1)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(FEATURES, CLASSES)


def accuracy(model: nn.Module) -> dict:
    x, y = batches(torch.Generator().manual_seed(999))
    return {"accuracy": (model(x).argmax(-1) == y).float().mean().item()}


def run(**kwargs) -> History:
    kwargs.setdefault("steps", 30)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    return train(kwargs.pop("model", None) or make_model(), batches, **kwargs)


# ------------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_an_identical_history():
    first = run(seed=5, evaluate=accuracy, eval_every=10, name="a")
    second = run(seed=5, evaluate=accuracy, eval_every=10, name="a")
    assert first.steps == second.steps
    assert first.train_loss == second.train_loss
    assert first.eval_steps == second.eval_steps
    assert first.eval_metrics == second.eval_metrics
    assert repr(first) == repr(second)


def test_different_seed_gives_different_batches():
    assert run(seed=1).train_loss != run(seed=2).train_loss


def test_batches_receive_a_generator_seeded_from_seed():
    seen = []

    def recording_batches(generator):
        seen.append(torch.rand(1, generator=generator).item())
        return batches(generator)

    train(make_model(), recording_batches, steps=3, seed=11, progress=False, device="cpu")
    reference = torch.Generator().manual_seed(11)
    expected = []
    for _ in range(3):
        expected.append(torch.rand(1, generator=reference).item())
        batches(reference)
    assert seen == expected


# ------------------------------------------------------------------------------------- learning
def test_loss_goes_down_on_a_learnable_problem():
    history = run(steps=150, lr=0.05, evaluate=accuracy)
    first, last = history.train_loss[:10], history.train_loss[-10:]
    assert sum(last) / 10 < 0.5 * sum(first) / 10
    assert history.final("accuracy") > 0.9


def test_training_changes_the_model_in_place_and_records_every_step():
    model = make_model()
    before = model.weight.detach().clone()
    history = run(model=model, steps=7)
    assert not torch.equal(before, model.weight.detach())
    assert history.steps == list(range(1, 8))
    assert len(history.train_loss) == 7
    assert all(math.isfinite(v) for v in history.train_loss)
    assert history.seconds > 0


def test_default_loss_is_cross_entropy_over_all_positions():
    model = nn.Embedding(5, 5)
    inputs = torch.tensor([[0, 1, 2], [3, 4, 0]])
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    logits = model(inputs)
    expected = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(next_token_loss(model, (inputs, targets)), expected)


# ------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("steps, eval_every, expected", [
    (10, 3, [3, 6, 9, 10]),
    (9, 3, [3, 6, 9]),
    (5, None, [5]),
    (5, 10, [5]),
    (1, 1, [1]),
])
def test_evaluation_runs_every_eval_every_steps_and_after_the_last(steps, eval_every, expected):
    calls = []

    def evaluate(model):
        calls.append(1)
        return {"accuracy": 0.5, "loss": 1.0}

    history = run(steps=steps, evaluate=evaluate, eval_every=eval_every)
    assert history.eval_steps == expected
    assert len(calls) == len(expected)
    assert history.eval_metrics == {"accuracy": [0.5] * len(expected), "loss": [1.0] * len(expected)}


def test_evaluation_runs_in_eval_mode_without_gradients_and_training_resumes():
    modes = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = make_model()

        def forward(self, x):
            modes.append(("forward", self.training, torch.is_grad_enabled()))
            return self.linear(x)

    def evaluate(model):
        modes.append(("eval", model.training, torch.is_grad_enabled()))
        return {}

    model = Probe()
    train(model, batches, steps=4, evaluate=evaluate, eval_every=2, progress=False, device="cpu")
    assert modes == [
        ("forward", True, True), ("forward", True, True), ("eval", False, False),
        ("forward", True, True), ("forward", True, True), ("eval", False, False),
    ]
    assert model.training


def test_stop_ends_training_at_an_evaluation():
    seen = []

    def evaluate(model):
        return {"count": len(seen)}

    def stop(metrics):
        seen.append(metrics["count"])
        return metrics["count"] >= 2

    history = run(steps=100, evaluate=evaluate, eval_every=5, stop=stop)
    assert history.eval_steps == [5, 10, 15]
    assert history.steps == list(range(1, 16))
    assert seen == [0, 1, 2]


def test_stop_that_never_fires_runs_every_step():
    history = run(steps=12, evaluate=accuracy, eval_every=4, stop=lambda m: False)
    assert history.steps[-1] == 12 and history.eval_steps == [4, 8, 12]


def test_history_final_and_repr():
    history = History(name="x", steps=[1, 2], train_loss=[3.0, 2.0])
    assert history.final() == 2.0
    with pytest.raises(KeyError, match="accuracy"):
        history.final("accuracy")
    history.eval_steps, history.eval_metrics = [2], {"loss": [1.23456], "accuracy": [0.5]}
    assert history.final() == 1.23456
    assert history.final("accuracy") == 0.5
    history.seconds = 12.5
    assert "12.5" not in repr(history)
    assert repr(history) == "History(name='x', steps=2, final_eval={'loss': 1.2346, 'accuracy': 0.5})"


# -------------------------------------------------------------------------------- learning rate
def expected_lr(step, steps, lr, warmup, schedule):
    """Warm-up from lr/warmup to lr, then constant, or a half cosine from lr down to lr / 10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    fraction = min((step - warmup) / max(1, steps - warmup), 1.0)
    floor = 0.1 * lr
    return floor + (lr - floor) * (1 + math.cos(math.pi * fraction)) / 2


def test_learning_rate_warm_up_is_linear_and_reaches_lr():
    values = [learning_rate(s, steps=100, lr=1.0, warmup=4, schedule="cosine") for s in range(5)]
    assert values == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_learning_rate_cosine_ends_at_ten_percent():
    assert learning_rate(100, steps=100, lr=2e-3, warmup=10, schedule="cosine") == pytest.approx(2e-4)
    assert learning_rate(500, steps=100, lr=2e-3, warmup=10, schedule="cosine") == pytest.approx(2e-4)
    # half way through the decay: the mean of lr and lr / 10
    assert learning_rate(55, steps=100, lr=1.0, warmup=10, schedule="cosine") == pytest.approx(0.55)


def test_learning_rate_cosine_decreases_monotonically_after_warm_up():
    values = [learning_rate(s, steps=50, lr=1.0, warmup=5, schedule="cosine") for s in range(5, 51)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) == pytest.approx(0.1)
    assert max(values) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_learning_rate_matches_the_schedule(schedule, warmup):
    for step in range(40):
        got = learning_rate(step, steps=30, lr=3e-3, warmup=warmup, schedule=schedule)
        assert got == pytest.approx(expected_lr(step, 30, 3e-3, warmup, schedule), rel=1e-12)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_optimizer_steps_with_the_scheduled_learning_rate(monkeypatch, schedule):
    used = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            used.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    run(steps=12, lr=0.01, warmup=3, schedule=schedule)
    assert used == pytest.approx([expected_lr(s, 12, 0.01, 3, schedule) for s in range(12)], rel=1e-12)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be a positive int"),
    ({"steps": -3}, "steps must be a positive int"),
    ({"steps": 2.0}, "steps must be a positive int"),
    ({"steps": 3, "eval_every": 0}, "eval_every"),
    ({"steps": 3, "schedule": "linear"}, "schedule must be"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    calls = []

    def counting_batches(generator):
        calls.append(1)
        return batches(generator)

    with pytest.raises(ValueError, match=message):
        train(make_model(), counting_batches, progress=False, device="cpu", **kwargs)
    assert calls == []  # rejected before any work


def test_non_finite_loss_raises_floating_point_error():
    def exploding(model, batch):
        loss = next_token_loss(model, batch)
        return loss * float("inf") if len(steps_seen) >= 2 else loss

    steps_seen = []

    def counting(generator):
        steps_seen.append(1)
        return batches(generator)

    model = make_model()
    with pytest.raises(FloatingPointError, match="at step 2"):
        train(model, counting, steps=10, loss_fn=exploding, progress=False, device="cpu")
    assert torch.isfinite(model.weight).all()  # the bad step was not applied


def test_nan_loss_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match="nan"):
        run(steps=3, loss_fn=lambda model, batch: model(batch[0]).sum() * float("nan"))


# --------------------------------------------------------------------------------- progress bars
def test_progress_false_writes_nothing(capsys):
    run(steps=5, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_true_shows_a_bar_and_trains_the_same(capsys):
    quiet = run(steps=12, progress=False, seed=3, evaluate=accuracy, eval_every=5)
    capsys.readouterr()
    loud = run(steps=12, progress=True, seed=3, evaluate=accuracy, eval_every=5, name="demo")
    err = capsys.readouterr().err
    assert "demo" in err and "12/12" in err and "loss=" in err
    assert loud.train_loss == quiet.train_loss
    assert loud.eval_metrics == quiet.eval_metrics


def test_progress_bar_is_closed_when_stopping_early(capsys, monkeypatch):
    closed = []
    real_tqdm = train_module.tqdm

    def tracking_tqdm(*args, **kwargs):
        bar = real_tqdm(*args, **kwargs)
        original = bar.close

        def close():
            closed.append(1)
            original()

        bar.close = close
        return bar

    monkeypatch.setattr(train_module, "tqdm", tracking_tqdm)
    history = run(steps=50, progress=True, evaluate=accuracy, eval_every=2, stop=lambda m: True)
    assert history.steps == [1, 2]
    assert closed
