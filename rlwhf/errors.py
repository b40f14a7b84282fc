"""The errors that stop a run or a command on purpose. ``rlwhf.cli`` turns each into its exit code in
one place: bad input (``ConfigError``, ``ValueError``, a missing or existing file) 2, a run that
failed (``RewardFailed``) 1, a preemption that checkpointed (``Preempted``) 0. Nothing heavy is
imported here, so every command can catch them."""


class RewardFailed(RuntimeError):
    """A reward failed on every group of a batch: its scores would be ``on_error`` throughout."""


class Preempted(Exception):
    """SIGTERM stopped the run after a step, whose checkpoint was then written; resume continues it."""
