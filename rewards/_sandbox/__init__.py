"""Internals of rewards.code: the worker interpreter and its pool."""
