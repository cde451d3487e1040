"""The project's one base class for errors a user can cause.

Every package raises a subclass of :class:`LearnedOptError` for a problem the user can fix
(an unknown name, a bad config value, a corrupt or foreign file, a missing dataset, a peer
that never came up): ``learned_opt`` (bad optimizer config, :class:`CheckpointError`),
``tasks`` (``TaskError``, ``DatasetNotFoundError``), ``meta_train`` (``ConfigError``,
``EstimatorError``, ``StateFileError``, ``DistributedError``). The ``lopt`` CLI catches this
one class and prints its message as a single ``lopt: error: ...`` line (exit status 2).
Bugs are not ``LearnedOptError``s and keep their traceback.
"""
from __future__ import annotations


class LearnedOptError(ValueError):
    """A user-caused problem anywhere in learned-opt; the message says what to do."""


class CheckpointError(LearnedOptError):
    """A checkpoint cannot be read: corrupt, foreign format or another architecture."""


__all__ = ["LearnedOptError", "CheckpointError"]
