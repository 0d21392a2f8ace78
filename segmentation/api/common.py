"""Shared plumbing of the bulk endpoints: batch decoding and per-item errors.

The bulk endpoints keep DRF for routing, authentication, throttling and the schema, but decode
and validate the batch with msgspec and the shared row validators: item-by-item serializers
would be an order of magnitude slower at 10,000 items.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from rest_framework.exceptions import ParseError, ValidationError

from segmentation.services.validation import RowError, RowInvalid


def decode_items(body: bytes, *, limit: int) -> list[msgspec.Raw]:
    """Split a JSON body into raw items: a list of up to ``limit`` objects, or one object."""
    try:
        value = msgspec.json.decode(body or b"null", type=list[msgspec.Raw] | dict)
    except msgspec.ValidationError:
        raise ValidationError(
            {"non_field_errors": ["Send a JSON object or a list of objects."]}
        ) from None
    except msgspec.DecodeError as error:
        raise ParseError(f"The body is not valid JSON: {error}.") from None
    except RecursionError:
        raise ParseError("The body is nested too deeply.") from None
    if isinstance(value, dict):
        return [msgspec.Raw(msgspec.json.encode(value))]
    if len(value) > limit:
        raise ValidationError(
            {"non_field_errors": [f"At most {limit:,} items per request; got {len(value):,}."]}
        )
    return value


def row_errors(errors: list[RowError]) -> list[dict[str, Any]]:
    return [error.as_dict(row_key="index") for error in errors]


def truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes", "on"}


#: msgspec's names of JSON types, as an integrator reads them.
_JSON_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
    "array": "a list",
    "object": "an object",
}
_TYPE_MISMATCH = re.compile(r"Expected `([^`]+)`, got `(\w+)`")


def _type_message(reason: str) -> str:
    """``Expected `object | null`, got `array``` -> ``Must be an object or null, not a list.``
    Other messages (lengths, formats) are kept as msgspec words them."""
    match = _TYPE_MISMATCH.fullmatch(reason)
    if match is None:
        return reason
    expected = [_JSON_TYPES.get(name, name) for name in match[1].split(" | ")]
    wanted = " or ".join([", ".join(expected[:-1]), expected[-1]] if expected[:-1] else expected)
    got = "a boolean" if match[2] == "bool" else _JSON_TYPES.get(match[2], match[2])
    return f"Must be {wanted}, not {got}."


def _validation_message(error: msgspec.ValidationError) -> tuple[str | None, str]:
    """msgspec says ``Expected `str`, got `int` - at `$.type```: split out the column, and
    say what was expected in plain words."""
    text = str(error)
    reason, _, where = text.partition(" - at `$.")
    column = where.rstrip("`").split(".")[0].split("[")[0] or None
    reason = _type_message(reason)
    if text.startswith("Object contains unknown field"):
        column = text.split("`")[1]
        reason = "Unknown field."
    elif text.startswith("Object missing required field"):
        column = text.split("`")[1]
        reason = "This field is required."
    return column, reason


class RowDecoder:
    """Decode raw items into a Struct, then a validated row, collecting per-item errors."""

    def __init__(self, struct: type[msgspec.Struct]):
        self.decoder = msgspec.json.Decoder(struct)

    def __call__(self, items: list[msgspec.Raw], clean) -> tuple[list, list[RowError]]:
        rows: list = []
        errors: list[RowError] = []
        decode = self.decoder.decode
        for index, raw in enumerate(items):
            try:
                rows.append((index, clean(decode(raw))))
            except msgspec.ValidationError as error:
                column, reason = _validation_message(error)
                errors.append(RowError(index, column, reason))
            except RowInvalid as error:
                errors.append(RowError(index, error.column, error.reason))
        return rows, errors
