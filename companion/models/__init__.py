"""Assembled models."""

from companion.models.classifiers import BagOfWordsClassifier, RecurrentClassifier
from companion.models.window_lm import WindowLM

__all__ = ["BagOfWordsClassifier", "RecurrentClassifier", "WindowLM"]
