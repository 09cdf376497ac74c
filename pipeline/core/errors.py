"""One base class for the errors a user can fix (bad params, data, artifacts, machine):
the CLI prints these as one line; anything else is a bug and keeps its traceback."""


class PipelineError(Exception):
    pass


class ArtifactError(PipelineError, ValueError):
    """A model file that is corrupt, incomplete, or of the wrong kind."""


class DatasetError(PipelineError, ValueError):
    """A dataset that cannot be read as its format says, or that changed under a stage."""


class MissingArtifactError(PipelineError):
    """An input another stage makes is not there; the message names that stage."""


class TrainingError(PipelineError, RuntimeError):
    """A run that cannot start or go on: bad weights, a changed dataset or checkpoint, a non-finite loss."""
