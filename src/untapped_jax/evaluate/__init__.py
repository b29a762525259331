"""Evaluation beyond accuracy: semantics of y, bound gaps."""
