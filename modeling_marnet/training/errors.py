"""The one exception type for bad user input, turned into a clean CLI error by the entry points."""


class TrainingInputError(ValueError):
    """Bad arguments, data or checkpoints, found before training starts. The message says what was expected,
    what was received and how to fix it."""
