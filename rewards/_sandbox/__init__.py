"""Internals of rewards.sandbox: the worker interpreter and its pool."""
