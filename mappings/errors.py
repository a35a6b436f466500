"""Errors raised by the mapping engine, at start-up and at request time."""

from __future__ import annotations


class SpecError(Exception):
    """Something in a YAML file is wrong: the file, its line, the place and the reason."""

    def __init__(self, file: str, place: str, line: int | None, reason: str) -> None:
        self.file = file
        self.place = place
        self.line = line
        self.reason = reason
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {place}: {reason}" if place else f"{where}: {reason}")


class MappingSpecError(SpecError):
    """A mapping spec is wrong: raised at start-up with the file, the place and the reason."""


class RecordMappingError(Exception):
    """A back-end record does not fit its mapping (missing column, unknown code, bad value).

    Raised while serving a request; the gateway turns it into a 502 naming the back end
    and the field, because the fault is the back end's data, not the caller's request.
    """

    def __init__(self, field: str, reason: str, where: str | None = None) -> None:
        self.field = field
        #: The mapping's file and line (`file:line`) the failing value is defined at.
        self.where = where
        self.reason = f"{reason} (mapping {where})" if where else reason
        super().__init__(f"{field}: {self.reason}")
