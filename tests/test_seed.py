"""companion.seed: one call makes Python's, NumPy's and PyTorch's random draws repeatable."""

import os
import random

import numpy as np
import pytest
import torch

from companion import seed_everything


def draws(generator: torch.Generator) -> dict:
    return {
        "random": [random.random() for _ in range(3)],
        "numpy": np.random.rand(3).tolist(),
        "torch": torch.rand(3).tolist(),
        "torch_int": torch.randint(0, 1000, (4,)).tolist(),
        "generator": torch.rand(3, generator=generator).tolist(),
    }


@pytest.mark.parametrize("seed", [0, 1, 1234, 2**32 + 5, -7])
def test_same_seed_same_draws(seed):
    first = draws(seed_everything(seed))
    second = draws(seed_everything(seed))
    assert first == second


def test_different_seeds_give_different_draws():
    first = draws(seed_everything(1))
    second = draws(seed_everything(2))
    for key in first:
        assert first[key] != second[key], key


def test_seeds_each_library_as_its_own_seed_function_would():
    seed_everything(42)
    ours = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(42)
    np.random.seed(42)
    torch.manual_seed(42)
    theirs = (random.random(), np.random.rand(), torch.rand(()).item())
    assert ours == theirs


def test_returned_generator_is_fresh_and_seeded_like_a_new_generator():
    generator = seed_everything(7)
    reference = torch.Generator().manual_seed(7)
    assert torch.equal(torch.rand(5, generator=generator), torch.rand(5, generator=reference))
    # a fresh generator each call, not a shared object whose state carries over
    assert seed_everything(7) is not generator


def test_returned_generator_is_independent_of_the_global_one():
    generator = seed_everything(3)
    torch.rand(100)  # advancing the global generator ...
    reference = torch.Generator().manual_seed(3)
    # ... does not move the returned one
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=reference))


def test_sets_pythonhashseed(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    seed_everything(99)
    assert os.environ["PYTHONHASHSEED"] == "99"


@pytest.mark.parametrize("bad", [1.0, "1", None, True, False, np.float64(3.0), torch.tensor(1)])
def test_bad_seed_type_raises_type_error(bad):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(bad)


def test_numpy_integer_seeds_are_accepted_and_equal_to_ints():
    assert draws(seed_everything(np.int64(11))) == draws(seed_everything(11))
