"""Fast decoding of the hot broker answers (positions, balances) with msgspec, in C.

Every accountSync pass reads every account's balances and positions; turning that JSON
into alpaca-py's pydantic models and then into Decimals was most of syncd's CPU. The
adapters decode these answers with msgspec instead, into structs that mirror the
broker's models field for field (:func:`struct_of` derives them from alpaca-py's own
pydantic models: same names, same types, same required fields), and take numbers
through :func:`number`, the common subset of :func:`syncd.brokers.parse.decimal_or_none`.

The fast path only ever ACCEPTS: it takes an answer only when everything in it is
plainly fine. Anything it does not take as it is -- a type msgspec refuses, a missing
field, a number that is not short and plain, a JSON number literal that might have more
digits than syncd keeps (:func:`may_hide_long_number`), a check of
:mod:`syncd.brokers.sanity` that fails -- raises :class:`Slow`, and the adapter decodes
the same bytes again the way it always has (``json`` + alpaca-py's models + every check),
which then gives the answer or the exact refusal it always gave. So the refusals, their
messages and fields are the slow path's; the fast path can only be faster.
``tests/unit/test_fast_decoding.py`` proves both agree on real payloads and on every lie.
"""

from __future__ import annotations

import re
import types
import typing
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec
from pydantic import BaseModel

from syncd.brokers.parse import MAX_INTEGER_DIGITS, MAX_SIGNIFICANT_DIGITS, is_finite

_SHORT = min(MAX_INTEGER_DIGITS, MAX_SIGNIFICANT_DIGITS)

# A run of more than MAX_SIGNIFICANT_DIGITS characters that may be part of a JSON number: the
# slow decoder checks such numbers' digits (HttpCore._decode); the fast one sends them there.
# Runs inside strings (a long quantity "123456789012345.12345") match too: they go the slow way.
_LONG_NUMBER = re.compile(rb"[0-9.eE+\-]{%d,}" % (MAX_SIGNIFICANT_DIGITS + 1))


# A number field the adapter reads, narrowed in C to 1..15 characters: at most 15 digits before the
# point and in all (within MAX_INTEGER_DIGITS and MAX_SIGNIFICANT_DIGITS). With only the characters
# of PLAIN_CHARS (see all_plain) it is finite, has no exponent, and Decimal(text) of it is exact.
PlainNumber = Annotated[str, msgspec.Meta(min_length=1, max_length=_SHORT)]
PLAIN_CHARS = "0123456789.-"
_DROP_PLAIN = str.maketrans("", "", PLAIN_CHARS)


def all_plain(text: str) -> bool:
    """Whether ``text`` (numbers the decoder narrowed to :data:`PlainNumber`, run together) holds
    nothing but digits, points and minus signs: then each of them is a finite number without an
    exponent, or not a number at all (``Decimal`` raises ``InvalidOperation``: the caller goes slow)."""
    return not text.translate(_DROP_PLAIN)


# An int written as text that pydantic's lax mode reads as that int (a subset: no sign, no spaces).
IntText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}$")]


class Slow(Exception):
    """The fast path does not take this answer as it is: decode it the slow way."""


def may_hide_long_number(body: bytes) -> bool:
    """Whether ``body`` may hold a number literal with more digits than syncd keeps (then: slow path)."""
    return _LONG_NUMBER.search(body) is not None


def number(text: str) -> Decimal:
    """``text`` as a Decimal when :func:`~syncd.brokers.parse.decimal_or_none` would give the same
    Decimal without looking further: a finite number in at most 15 characters whose integer part
    has at most 15 digits. Anything else (empty, not a number, NaN, long, an exponent) -> ``Slow``."""
    if len(text) > _SHORT or not text:
        raise Slow
    try:
        out = Decimal(text)
    except InvalidOperation:
        raise Slow from None
    if not is_finite(out) or out.adjusted() >= MAX_INTEGER_DIGITS:
        raise Slow
    return out


def number_or_none(text: str | None) -> Decimal | None:
    return None if text is None else number(text)


class FastDecoder:
    """Decodes one answer (a ``model`` object, or a list of them) into mirrors of ``model``, or raises ``Slow``.

    First with every key known (``forbid_unknown_fields``) and msgspec's strict types: then no
    JSON number with a point or an exponent is accepted anywhere (every number alpaca-py reads as
    text is a JSON string; an int field takes a JSON integer or :data:`IntText`), so none can hide
    digits. An answer with keys the model does not know goes through a second decoder that
    ignores them, as pydantic does -- unless :func:`may_hide_long_number` says one of them might
    be a number the slow decoder would refuse for its digits.
    """

    def __init__(self, model: type[BaseModel], *, many: bool = False, plain: frozenset[str] = frozenset()) -> None:
        strict = struct_of(model, strict=True, plain=plain)
        lenient = struct_of(model, strict=False, plain=plain)
        self._strict: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[strict] if many else strict)  # type: ignore[valid-type]
        self._lenient: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[lenient] if many else lenient)  # type: ignore[valid-type]

    def decode(self, body: bytes) -> Any:
        try:
            return self._strict.decode(body)
        except msgspec.ValidationError:
            pass  # perhaps keys the model does not know
        except msgspec.DecodeError:
            raise Slow from None  # not JSON: the slow decoder says so, as always
        if may_hide_long_number(body):
            raise Slow
        try:
            return self._lenient.decode(body)
        except msgspec.DecodeError:  # ValidationError included
            raise Slow from None


def struct_of(
    model: type[BaseModel], *, strict: bool = False, plain: frozenset[str] = frozenset()
) -> type[msgspec.Struct]:
    """A msgspec Struct with ``model``'s fields: same names, types (nested models too), required fields.

    ``plain``: top-level ``str`` fields holding numbers the adapter reads; the mirror narrows them
    to :data:`PlainNumber` (1 to 15 characters, checked in C). One that is longer, or empty,
    fails the decode: the answer goes the slow way.

    ``strict=False``: unknown keys are ignored, as pydantic ignores them. ``strict=True``: an
    unknown key is an error. A float field is refused (its JSON number could hide digits). An
    int field takes a JSON integer or :data:`IntText`. msgspec is strict where pydantic's lax
    mode coerces (``"true"`` for a bool, a number for a datetime): such an answer fails here and
    goes the slow way, where pydantic decides.
    """
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field_name, info in model.model_fields.items():
        if info.alias is not None and info.alias != field_name:
            raise TypeError(f"{model.__name__}.{field_name}: aliases are not mirrored")
        kind = _mirror(info.annotation, strict)
        if field_name in plain:
            if kind is str:
                kind = PlainNumber
            elif kind == (str | None):
                kind = PlainNumber | None
            else:
                raise TypeError(f"{model.__name__}.{field_name} is not a str field")
        fields.append((field_name, kind) if info.is_required() else (field_name, kind, None))
    name = f"Fast{model.__name__}{'Strict' if strict else ''}"
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=strict)


def _mirror(annotation: Any, strict: bool) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return struct_of(annotation, strict=strict)
    if annotation is float:
        raise TypeError("a float field is not mirrored: its JSON number could hide digits")
    if annotation is int:
        # pydantic's lax mode takes "1" for an int (Alpaca sends "options_approved_level": "1"):
        # the mirror takes a JSON integer or plain digits as text, a subset of what pydantic takes.
        return int | IntText
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = tuple(_mirror(a, strict) for a in typing.get_args(annotation))
        return typing.Union[args]  # noqa: UP007 -- built at run time from a tuple
    if origin in (list, dict):
        return origin[tuple(_mirror(a, strict) for a in typing.get_args(annotation))]
    return annotation
