"""Domain errors raised by services; the API and views map them to responses."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the domain refuses. ``field`` names the offending input when there is one."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code

    def as_dict(self) -> dict[str, list[str]]:
        return {self.field or "detail": [self.message]}
