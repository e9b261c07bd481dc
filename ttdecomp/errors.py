"""Exception and warning classes raised by ttdecomp.

Every error ttdecomp raises on bad input is one of these, so callers can catch
``ttdecomp.errors.TTError`` for "ttdecomp rejected my input" while the classes still
derive from the builtin type a Python user would expect (``ValueError`` for a bad
value, ``TypeError`` for a bad type).

Examples
--------
>>> import numpy as np
>>> import ttdecomp as tt
>>> try:
...     tt.tt_svd(np.full((4, 4), np.nan), ranks=2)
... except tt.errors.TTError as err:
...     print(isinstance(err, ValueError), str(err)[:40])
True ...
"""

from __future__ import annotations

__all__ = [
    "BackendMismatchError",
    "InvalidInputError",
    "InvalidOptionError",
    "RankClippedWarning",
    "RankError",
    "ShapeError",
    "TTError",
    "TTWarning",
]


class TTError(Exception):
    """Base class of every error ttdecomp raises on bad input."""


class ShapeError(TTError, ValueError):
    """Shapes that do not fit together (core ranks, mode sizes, matrix dimensions)."""


class RankError(TTError, ValueError):
    """Ranks that cannot exist: wrong length, non-unit boundaries, zero or negative values."""


class InvalidInputError(TTError, ValueError):
    """An array or argument with invalid content: NaN/Inf, a tolerance out of range, ..."""


class InvalidOptionError(InvalidInputError):
    """A configuration option with an invalid value; ``option`` is the field's name.

    Messages name the option as a Python user spells it (``epochs``); the command line
    rewrites that name to its flag (``--epochs``) in one place
    (:func:`ttdecomp.cli._options.error_message`).

    Examples
    --------
    >>> err = InvalidOptionError("epochs must be an integer >= 1; got 0.", option="epochs")
    >>> err.option, isinstance(err, ValueError)
    ('epochs', True)
    """

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


class BackendMismatchError(TTError, TypeError):
    """Operands from different array libraries (or unsupported dtypes) mixed in one call."""


class TTWarning(UserWarning):
    """Base class of ttdecomp's warnings."""


class RankClippedWarning(TTWarning):
    """Requested ranks exceeded what the shape allows and were reduced to the attainable maximum."""
