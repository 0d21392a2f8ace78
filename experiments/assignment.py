"""GrowthBook-compatible deterministic variant assignment (pure Python + numpy).

Campaign A/B splits and the assignment API both bucket units through this module, so that
our server and integrators' GrowthBook SDKs put every unit in the same variant. It
reproduces the deterministic-bucketing primitives of GrowthBook's SDK spec (``gbhash``,
``getEqualWeights``, ``getBucketRanges``, ``chooseVariation``, ``inNamespace`` and the
bucketing steps of ``_run``) with the same floating-point operations in the same order, so
results agree bit for bit, not merely approximately. It must never import Django.

Hashing
    FNV-1a 32-bit (offset basis ``0x811C9DC5``, prime ``0x01000193``, arithmetic modulo
    ``2**32``) over the string's Unicode code points (``ord(ch)``), as GrowthBook's Python
    SDK up to 3.x does. Version 1 is ``(fnv(value + seed) % 1000) / 1000``; version 2 is
    ``(fnv(str(fnv(seed + value))) % 10000) / 10000``; any other version gives ``None``.

    Code points and UTF-16 code units (what the JavaScript SDK's ``charCodeAt`` loop and the
    Python SDK from 4.0 hash) differ only for characters outside the Basic Multilingual Plane
    (emoji, ``U+10000`` and up). Every hashing function takes ``utf16=True`` to hash UTF-16
    code units instead, for parity with those SDKs on such strings; ASCII and other BMP
    strings hash identically either way.

Vectorized path
    :func:`hash_many` and :func:`assign_many` compute the same values as :func:`hash_unit`
    and :func:`assign` for a whole batch with numpy (several million UUIDs per second on
    one core). :func:`assign_many` marks excluded units with :data:`EXCLUDED` (``-1``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "EXCLUDED",
    "FNV_OFFSET_BASIS",
    "FNV_PRIME",
    "BucketRange",
    "Namespace",
    "assign",
    "assign_many",
    "bucket_ranges",
    "choose_variation",
    "choose_variation_many",
    "equal_weights",
    "fnv1a32",
    "hash_many",
    "hash_unit",
    "in_namespace",
    "in_namespace_many",
]

FNV_OFFSET_BASIS: Final = 0x811C9DC5
FNV_PRIME: Final = 0x01000193
_MASK32: Final = 0xFFFFFFFF

#: Variant index :func:`assign_many` returns for a unit that is not in the experiment.
EXCLUDED: Final = -1

#: A variant's half-open bucket ``[start, end)`` on the unit interval.
BucketRange = tuple[float, float]
#: GrowthBook namespace ``(namespace_id, start, end)``: the unit is in it when its
#: namespace hash ``n`` satisfies ``start <= n < end``.
Namespace = tuple[str, float, float]

# GrowthBook accepts weights whose sum is within 0.01 of 1 (inclusive bounds).
_WEIGHT_SUM_MIN: Final = 0.99
_WEIGHT_SUM_MAX: Final = 1.01

# Rows hashed per numpy batch: keeps the working set in cache and bounds peak memory.
_CHUNK_ROWS: Final = 1 << 16

_NP_PRIME: Final = np.uint32(FNV_PRIME)


# --------------------------------------------------------------------------------------
# Scalar path
# --------------------------------------------------------------------------------------


def _code_units(s: str, utf16: bool) -> Iterable[int]:
    """The integers FNV-1a consumes for ``s``: code points, or UTF-16 code units."""
    if s.isascii():
        return s.encode("ascii")
    if not utf16:
        return map(ord, s)
    return _utf16_units(s)


def _utf16_units(s: str) -> Iterator[int]:
    for ch in s:
        cp = ord(ch)
        if cp > 0xFFFF:
            cp -= 0x10000
            yield 0xD800 | (cp >> 10)
            yield 0xDC00 | (cp & 0x3FF)
        else:
            # BMP characters, including lone surrogates, are one code unit (JS semantics).
            yield cp


def _fnv_update(hval: int, s: str, utf16: bool) -> int:
    for unit in _code_units(s, utf16):
        hval = ((hval ^ unit) * FNV_PRIME) & _MASK32
    return hval


def fnv1a32(s: str, *, utf16: bool = False) -> int:
    """FNV-1a 32-bit hash of ``s`` over its code points (or UTF-16 code units)."""
    return _fnv_update(FNV_OFFSET_BASIS, s, utf16)


def hash_unit(seed: str, value: str, version: int, *, utf16: bool = False) -> float | None:
    """GrowthBook's ``hash(seed, value, version)``: a deterministic number in ``[0, 1)``.

    Version 1 (legacy): ``(fnv(value + seed) % 1000) / 1000``, three decimals.
    Version 2: ``(fnv(str(fnv(seed + value))) % 10000) / 10000``, four decimals; hashing the
    decimal string of the first hash again removes version 1's bias between experiments
    that share units. Any other version returns ``None`` (the SDK's "invalid hashVersion").
    """
    if version == 2:
        first = fnv1a32(seed + value, utf16=utf16)
        return (fnv1a32(str(first)) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed, utf16=utf16) % 1000) / 1000
    return None


def equal_weights(num_variations: int) -> list[float]:
    """GrowthBook's ``getEqualWeights``: ``[1/n] * n``, or ``[]`` when ``n < 1``."""
    if num_variations < 1:
        return []
    return [1 / num_variations] * num_variations


def _weights_usable(weights: Sequence[float], num_variations: int) -> bool:
    if len(weights) != num_variations:
        return False
    # Left-to-right accumulation, as the JS SDK's reduce and CPython < 3.12's sum() do
    # (3.12's sum() compensates rounding and could flip a sum sitting on a bound).
    total = 0.0
    for w in weights:
        total += w
    # Written so that a NaN total is rejected too.
    return _WEIGHT_SUM_MIN <= total <= _WEIGHT_SUM_MAX


def bucket_ranges(
    num_variations: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[BucketRange]:
    """GrowthBook's ``getBucketRanges``: one half-open ``(start, end)`` per variation.

    ``coverage`` is clamped to ``[0, 1]``. ``weights`` fall back to :func:`equal_weights`
    when missing, of a length other than ``num_variations``, or not summing to 1 within
    0.01. Variation ``i`` starts at the sum of the preceding weights and covers
    ``coverage * weights[i]`` of its slot, so lowering coverage never moves a unit from one
    variation to another. No rounding is applied: e.g. ``0.2 * 0.2`` gives an end of
    ``0.04000000000000001`` exactly as in every SDK, which decides where a hash of exactly
    ``0.04`` lands.
    """
    if coverage < 0:
        coverage = 0.0
    if coverage > 1:
        coverage = 1.0
    if weights is None or not _weights_usable(weights, num_variations):
        weights = equal_weights(num_variations)

    cumulative = 0.0
    ranges: list[BucketRange] = []
    for w in weights:
        start = cumulative
        cumulative += w
        ranges.append((start, start + coverage * w))
    return ranges


def choose_variation(n: float, ranges: Sequence[BucketRange]) -> int:
    """GrowthBook's ``chooseVariation``: the first ``i`` with ``start <= n < end``, else -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(unit_id: str, namespace: Namespace, *, utf16: bool = False) -> bool:
    """GrowthBook's ``inNamespace``: ``start <= hash("__" + namespace_id, unit_id, 1) < end``."""
    namespace_id, start, end = namespace
    n = hash_unit("__" + namespace_id, unit_id, 1, utf16=utf16)
    if n is None:  # unreachable: version 1 is always supported
        return False
    return start <= n < end


def _resolve_ranges(
    num_variations: int | None,
    weights: Sequence[float] | None,
    coverage: float | None,
    ranges: Sequence[BucketRange] | None,
) -> list[BucketRange] | None:
    """Bucket ranges for an experiment, or ``None`` when it has fewer than two variations."""
    if num_variations is None:
        if weights is not None:
            num_variations = len(weights)
        elif ranges is not None:
            num_variations = len(ranges)
        else:
            raise TypeError("assign() needs num_variations, weights or ranges")
    if num_variations < 2:
        return None
    if ranges is not None:
        return [(start, end) for start, end in ranges]
    return bucket_ranges(num_variations, 1.0 if coverage is None else coverage, weights)


def assign(
    *,
    seed: str,
    unit_id: str,
    num_variations: int | None = None,
    weights: Sequence[float] | None = None,
    coverage: float | None = 1.0,
    namespace: Namespace | None = None,
    hash_version: int = 2,
    ranges: Sequence[BucketRange] | None = None,
    utf16: bool = False,
) -> int | None:
    """Variant index for ``unit_id`` in an experiment, or ``None`` when it is excluded.

    Mirrors the bucketing steps of GrowthBook's ``_run``:

    1. fewer than two variations: excluded;
    2. empty ``unit_id`` (GrowthBook's empty hash attribute): excluded;
    3. ``namespace`` given and the unit outside it (:func:`in_namespace`): excluded;
    4. ``n = hash_unit(seed, unit_id, hash_version)``; unsupported version: excluded;
    5. ``choose_variation(n, ranges)`` with explicit ``ranges`` if given (they take
       precedence over weights and coverage, as ``experiment.ranges`` does), else
       ``bucket_ranges(num_variations, coverage, weights)``; ``-1`` (outside coverage):
       excluded.

    ``seed`` is the experiment's seed (the SDK defaults it to the experiment key; here it is
    required). ``num_variations`` defaults to ``len(weights)``, then ``len(ranges)``.
    ``coverage=None`` means 1, as in the SDK. ``hash_version`` defaults to 2, which
    GrowthBook writes for new experiments; the SDK assumes 1 when a payload omits it, so
    pass ``hash_version=1`` explicitly for such legacy experiments.
    """
    resolved = _resolve_ranges(num_variations, weights, coverage, ranges)
    if resolved is None or not unit_id:
        return None
    if namespace is not None and not in_namespace(unit_id, namespace, utf16=utf16):
        return None
    n = hash_unit(seed, unit_id, hash_version, utf16=utf16)
    if n is None:
        return None
    index = choose_variation(n, resolved)
    return None if index < 0 else index


# --------------------------------------------------------------------------------------
# Vectorized path
# --------------------------------------------------------------------------------------


def _as_str_list(values: Sequence[str] | npt.NDArray[np.str_]) -> Sequence[str]:
    if isinstance(values, (list, tuple)):
        return values
    if isinstance(values, np.ndarray):
        return values.ravel().tolist()
    return list(values)


def _encode_batch(
    chunk: Sequence[str], utf16: bool
) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.int64]]:
    """Concatenated code units of ``chunk`` and the number of units in each string."""
    lens = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))
    joined = "".join(chunk)
    if joined.isascii():
        return np.frombuffer(joined.encode("ascii"), dtype=np.uint8), lens
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if utf16:
        astral = codes > 0xFFFF
        if astral.any():
            return _utf32_to_utf16(codes, lens, astral)
    return codes, lens


def _utf32_to_utf16(
    codes: npt.NDArray[np.uint32], lens: npt.NDArray[np.int64], astral: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """Split astral code points into surrogate pairs, growing each row's length to match."""
    extra = np.cumsum(astral, dtype=np.int64)
    ends = np.cumsum(lens)
    before_end = np.concatenate(([0], extra))[ends]
    before_start = np.concatenate(([0], before_end[:-1]))
    new_lens = lens + (before_end - before_start)
    # Position of each code point in the output: shifted by the astral ones before it.
    pos = np.arange(codes.size, dtype=np.int64) + extra - astral
    out = np.empty(codes.size + int(extra[-1]), dtype=np.uint32)
    offset = codes.astype(np.int64) - 0x10000
    out[pos] = np.where(astral, 0xD800 | (offset >> 10), codes)
    out[pos[astral] + 1] = 0xDC00 | (offset[astral] & 0x3FF)
    return out, new_lens


def _fnv_batch(
    codes: npt.NDArray[np.unsignedinteger], lens: npt.NDArray[np.int64], init: int
) -> npt.NDArray[np.uint32]:
    """FNV-1a of each row, starting from state ``init`` (uint32 wraparound arithmetic)."""
    n = lens.size
    h = np.full(n, init, dtype=np.uint32)
    if n == 0:
        return h
    max_len = int(lens.max())
    if max_len == 0:
        return h
    if int(lens.min()) == max_len:
        # Fixed-width ids (UUIDs, zero-padded numbers): a zero-copy (n, width) view.
        matrix = codes.reshape(n, max_len)
        for j in range(max_len):
            h ^= matrix[:, j]
            h *= _NP_PRIME
        return h
    # Variable lengths: visit rows longest first, so at position j the rows still running
    # are a prefix of that order; each step gathers exactly one unit per running row.
    order = np.argsort(lens, kind="stable")[::-1]
    starts = (np.cumsum(lens) - lens)[order]
    active = n - np.cumsum(np.bincount(lens, minlength=max_len + 1))
    hs = h[order]
    for j in range(max_len):
        k = int(active[j])
        hs[:k] ^= codes[starts[:k] + j]
        hs[:k] *= _NP_PRIME
    h[order] = hs
    return h


def _fnv_decimal_many(h: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """FNV-1a of ``str(x)`` for each ``x`` in ``h`` (version 2's second round)."""
    out = np.full(h.shape, FNV_OFFSET_BASIS, dtype=np.uint32)
    step = np.empty_like(out)
    for power in range(9, -1, -1):
        place = np.uint32(10**power)
        digit = (h // place) % np.uint32(10) + np.uint32(ord("0"))
        np.bitwise_xor(out, digit, out=step)
        step *= _NP_PRIME
        if power == 0:
            out = step  # the units digit always exists ("0" for zero)
        else:
            # Leading zeros are not part of the decimal string.
            np.copyto(out, step, where=h >= place)
    return out


def _fnv_many(values: Sequence[str], prefix: str, suffix: str, utf16: bool) -> np.ndarray:
    """``fnv1a32(prefix + v + suffix)`` for each ``v`` in ``values``, as uint32."""
    init = _fnv_update(FNV_OFFSET_BASIS, prefix, utf16)
    suffix_units = list(_code_units(suffix, utf16))
    out = np.empty(len(values), dtype=np.uint32)
    for lo in range(0, len(values), _CHUNK_ROWS):
        chunk = values[lo : lo + _CHUNK_ROWS]
        codes, lens = _encode_batch(chunk, utf16)
        h = _fnv_batch(codes, lens, init)
        for unit in suffix_units:
            h ^= np.uint32(unit)
            h *= _NP_PRIME
        out[lo : lo + len(chunk)] = h
    return out


def hash_many(
    seed: str,
    values: Sequence[str] | npt.NDArray[np.str_],
    version: int,
    *,
    utf16: bool = False,
) -> npt.NDArray[np.float64] | None:
    """Vectorized :func:`hash_unit`: ``hash_unit(seed, v, version)`` for every ``v``.

    Returns a float64 array equal element for element to the scalar function, or ``None``
    for an unsupported ``version``. ``values`` must be strings (a ``TypeError`` otherwise);
    a numpy string array is accepted as is.
    """
    if version not in (1, 2):
        return None
    items = _as_str_list(values)
    if version == 1:
        return (_fnv_many(items, "", seed, utf16) % np.uint32(1000)) / 1000.0
    first = _fnv_many(items, seed, "", utf16)
    return (_fnv_decimal_many(first) % np.uint32(10000)) / 10000.0


def choose_variation_many(
    n: npt.NDArray[np.float64], ranges: Sequence[BucketRange]
) -> npt.NDArray[np.int64]:
    """Vectorized :func:`choose_variation`: first matching range per element, else -1."""
    out = np.full(np.shape(n), EXCLUDED, dtype=np.int64)
    # Assign from the last range to the first so that the first match wins.
    for i in range(len(ranges) - 1, -1, -1):
        start, end = ranges[i]
        out[(n >= start) & (n < end)] = i
    return out


def in_namespace_many(
    unit_ids: Sequence[str] | npt.NDArray[np.str_],
    namespace: Namespace,
    *,
    utf16: bool = False,
) -> npt.NDArray[np.bool_]:
    """Vectorized :func:`in_namespace`."""
    namespace_id, start, end = namespace
    n = hash_many("__" + namespace_id, unit_ids, 1, utf16=utf16)
    assert n is not None  # version 1 is always supported
    return (n >= start) & (n < end)


def assign_many(
    *,
    seed: str,
    unit_ids: Sequence[str] | npt.NDArray[np.str_],
    num_variations: int | None = None,
    weights: Sequence[float] | None = None,
    coverage: float | None = 1.0,
    namespace: Namespace | None = None,
    hash_version: int = 2,
    ranges: Sequence[BucketRange] | None = None,
    utf16: bool = False,
) -> npt.NDArray[np.int64]:
    """Vectorized :func:`assign` over ``unit_ids`` (same keyword arguments).

    Returns an int64 array of variant indices aligned with ``unit_ids``, holding
    :data:`EXCLUDED` (``-1``) wherever :func:`assign` would return ``None``.
    """
    items = _as_str_list(unit_ids)
    out = np.full(len(items), EXCLUDED, dtype=np.int64)
    resolved = _resolve_ranges(num_variations, weights, coverage, ranges)
    if resolved is None or not items:
        return out
    n = hash_many(seed, items, hash_version, utf16=utf16)
    if n is None:
        return out
    out = choose_variation_many(n, resolved)
    if namespace is not None:
        out[~in_namespace_many(items, namespace, utf16=utf16)] = EXCLUDED
    if "" in items:  # a C-level scan; empty ids are rare
        out[np.fromiter(map(len, items), dtype=np.int64, count=len(items)) == 0] = EXCLUDED
    return out
