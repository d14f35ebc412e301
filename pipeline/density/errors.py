"""The density package's error: bad parameters or features that cannot be fitted (one line, exit 2 in the CLI)."""

from pipeline.errors import ClipwatchError


class DensityError(ClipwatchError, ValueError):
    """Invalid density or PCA parameters, malformed features, or features too degenerate to fit."""
