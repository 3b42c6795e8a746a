"""exdd_core: the ExDD method (dual memory banks, ratio scoring) as a library that knows nothing of DVC."""

__version__ = "0.1.0"
