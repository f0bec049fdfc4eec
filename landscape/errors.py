"""One exception family, so callers (and the CLI) can catch every usage error in one place."""


class LandscapeError(Exception):
    """A usage or input error with a message that names the culprit and the fix."""


class DataError(LandscapeError):
    """The data set is empty, malformed, or does not fit the model."""


class LossError(LandscapeError):
    """The loss is not a finite scalar."""


class ParameterError(LandscapeError):
    """The parameter selection is empty or names parameters that cannot be differentiated."""


class OptionError(LandscapeError, ValueError):
    """An argument has a value outside what the function accepts."""


class CheckpointError(LandscapeError):
    """A checkpoint file is missing, corrupt, unsafe to load, or does not fit the model."""


class StoreError(LandscapeError):
    """A results file cannot be read or written, or is not a landscape file."""
