"""Errors caused by what the user passed in (config, checkpoint, custom env). The console scripts print these
as one clear message and exit with status 2 instead of a traceback."""


class UserError(Exception):
    """Base class: the message names the problem and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that composes (hydra checked its key and type) but names something that does not exist."""


class TrainingDivergedError(UserError):
    """NaN or inf kept appearing in observations, rewards, losses or gradients; the run stopped before writing
    a checkpoint with non-finite weights."""


class EnvFailureError(UserError):
    """Env workers kept failing (raising or dying) with no completed rollout in between."""
