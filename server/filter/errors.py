"""The one exception type the filter package raises."""

from __future__ import annotations

__all__ = ["EVALUATOR_PREFIX", "FilterError"]

# Consul wraps every problem found while building a filter (syntax, unknown selector, bad
# value for a field's type, bad regular expression) in this prefix.
EVALUATOR_PREFIX = "Failed to create boolean expression evaluator: "


class FilterError(ValueError):
    """A filter expression that cannot be compiled or evaluated.

    ``str(err)`` is a single line suitable as the body of an HTTP 400 response. ``offset`` is
    the character offset into the expression of a syntax error, when there is one.
    """

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return self.message
