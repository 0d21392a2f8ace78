"""Tests for experiments.assignment: GrowthBook conformance, vectorized parity, edge cases.

The conformance vectors are a copy of GrowthBook's SDK spec cases (see the JSON file's
``source`` line) kept in ``data/`` so the suite never reads outside the repository.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments import assignment
from experiments.assignment import (
    EXCLUDED,
    FNV_OFFSET_BASIS,
    assign,
    assign_many,
    bucket_ranges,
    choose_variation,
    choose_variation_many,
    equal_weights,
    fnv1a32,
    hash_many,
    hash_unit,
    in_namespace,
    in_namespace_many,
)

CASES_PATH = Path(__file__).parent / "data" / "growthbook-bucketing-cases.json"
CASES: dict[str, Any] = json.loads(CASES_PATH.read_text(encoding="utf-8"))


def _round_ranges(ranges: list[Any]) -> list[tuple[float, float]]:
    # GrowthBook's own spec tests compare bucket ranges rounded to 6 decimals: the expected
    # values are written rounded (0.04), the SDK arithmetic gives 0.04000000000000001.
    return [(round(start, 6), round(end, 6)) for start, end in ranges]


# --------------------------------------------------------------------------------------
# Conformance vectors
# --------------------------------------------------------------------------------------


def test_conformance_file_keeps_source_and_license() -> None:
    assert "MIT License" in CASES["source"]
    assert "growthbook" in CASES["source"]
    assert set(CASES) >= {
        "hash",
        "getBucketRange",
        "chooseVariation",
        "inNamespace",
        "getEqualWeights",
    }


@pytest.mark.parametrize(
    ("seed", "value", "version", "expected"),
    CASES["hash"],
    ids=[f"v{c[2]}-seed={c[0]!r}-value={c[1]!r}" for c in CASES["hash"]],
)
def test_hash_conformance(seed: str, value: str, version: int, expected: float | None) -> None:
    assert hash_unit(seed, value, version) == expected
    vectorized = hash_many(seed, [value, value], version)
    if expected is None:
        assert vectorized is None
    else:
        assert vectorized is not None
        assert vectorized.tolist() == [expected, expected]


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    CASES["getBucketRange"],
    ids=[c[0] for c in CASES["getBucketRange"]],
)
def test_bucket_ranges_conformance(name: str, args: list[Any], expected: list[Any]) -> None:
    num_variations, coverage, weights = args
    actual = bucket_ranges(num_variations, coverage, weights)
    assert len(actual) == len(expected)
    assert _round_ranges(actual) == _round_ranges(expected)
    for (start, end), (exp_start, exp_end) in zip(actual, expected, strict=True):
        assert math.isclose(start, exp_start, abs_tol=1e-12)
        assert math.isclose(end, exp_end, abs_tol=1e-12)


@pytest.mark.parametrize(
    ("name", "n", "ranges", "expected"),
    CASES["chooseVariation"],
    ids=[c[0] for c in CASES["chooseVariation"]],
)
def test_choose_variation_conformance(
    name: str, n: float, ranges: list[Any], expected: int
) -> None:
    assert choose_variation(n, ranges) == expected
    pairs = [tuple(r) for r in ranges]
    assert choose_variation_many(np.array([n, n]), pairs).tolist() == [expected, expected]


@pytest.mark.parametrize(
    ("name", "unit_id", "namespace", "expected"),
    CASES["inNamespace"],
    ids=[c[0] for c in CASES["inNamespace"]],
)
def test_in_namespace_conformance(
    name: str, unit_id: str, namespace: list[Any], expected: bool
) -> None:
    ns = (namespace[0], namespace[1], namespace[2])
    assert in_namespace(unit_id, ns) is expected
    assert in_namespace_many([unit_id], ns).tolist() == [expected]


@pytest.mark.parametrize(
    ("num_variations", "expected"),
    CASES["getEqualWeights"],
    ids=[f"n={c[0]}" for c in CASES["getEqualWeights"]],
)
def test_equal_weights_conformance(num_variations: int, expected: list[float]) -> None:
    actual = equal_weights(num_variations)
    assert [round(w, 8) for w in actual] == [round(w, 8) for w in expected]
    assert actual == ([1 / num_variations] * num_variations if num_variations > 0 else [])


# --------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0x811C9DC5), ("a", 0xE40C292C), ("ab", 0x4D2505CA), ("foobar", 0xBF9CF968)],
)
def test_fnv1a32_reference_values(text: str, expected: int) -> None:
    # Landon Curt Noll's FNV-1a 32-bit test suite (byte strings; ASCII is identical).
    assert fnv1a32(text) == expected


def _fnv_reference(units: list[int]) -> int:
    hval = FNV_OFFSET_BASIS
    for unit in units:
        hval = ((hval ^ unit) * 0x01000193) % 2**32
    return hval


def test_fnv1a32_hashes_code_points_by_default() -> None:
    for text in ["é", "中文", "\U0001f600", "a\U00010000b", "\ud800", "\x00\x00"]:
        assert fnv1a32(text) == _fnv_reference([ord(ch) for ch in text])


def test_fnv1a32_utf16_hashes_surrogate_pairs() -> None:
    assert fnv1a32("\U0001f600", utf16=True) == _fnv_reference([0xD83D, 0xDE00])
    assert fnv1a32("x\U0010ffff", utf16=True) == _fnv_reference([ord("x"), 0xDBFF, 0xDFFF])
    assert fnv1a32("\U0001f600", utf16=True) != fnv1a32("\U0001f600")
    # BMP text (including lone surrogates) is the same in both modes.
    for text in ["", "abc", "é中\uffff", "\ud800\udc00"]:
        assert fnv1a32(text, utf16=True) == fnv1a32(text)


@pytest.mark.parametrize("version", [0, 3, 99, -1])
def test_unsupported_hash_version(version: int) -> None:
    assert hash_unit("seed", "unit", version) is None
    assert hash_many("seed", ["unit"], version) is None
    assert assign(seed="seed", unit_id="unit", num_variations=2, hash_version=version) is None
    out = assign_many(seed="seed", unit_ids=["a", "b"], num_variations=2, hash_version=version)
    assert out.tolist() == [EXCLUDED, EXCLUDED]


def test_hash_ranges_and_resolution() -> None:
    values = [str(i) for i in range(5000)]
    v1 = hash_many("s", values, 1)
    v2 = hash_many("s", values, 2)
    assert v1 is not None and v2 is not None
    assert v1.dtype == np.float64 and v2.dtype == np.float64
    assert ((v1 >= 0) & (v1 < 1)).all() and ((v2 >= 0) & (v2 < 1)).all()
    assert np.array_equal(np.round(v1 * 1000) / 1000, v1)
    assert np.array_equal(np.round(v2 * 10000) / 10000, v2)


def _random_text(rng: random.Random, max_len: int) -> str:
    pools = [
        "abcdefghijklmnopqrstuvwxyz0123456789-_",
        "éßøñüÅЖЯ中文字한국어αβγ",
        "\U0001f600\U0001f680\U00010000\U0010ffff\U0002a6d6",
        "\x00\x01\x7f\u0100\ud7ff\ue000\uffff",
        "\ud800\udbff\udc00\udfff",  # lone surrogates are valid Python str items
    ]
    pieces = []
    for _ in range(rng.randint(0, max_len)):
        pool = pools[rng.choices(range(len(pools)), weights=[10, 3, 2, 1, 1])[0]]
        pieces.append(rng.choice(pool))
    return "".join(pieces)


def _random_strings(seed: int, count: int, max_len: int = 24) -> list[str]:
    rng = random.Random(seed)
    values = [_random_text(rng, max_len) for _ in range(count)]
    values += ["", "", "\x00", "a\x00", "\x00\x00\x00", "9" * 300, "\U0001f600" * 40]
    rng.shuffle(values)
    return values


RANDOM_STRINGS = _random_strings(20240601, 4000)
ASCII_STRINGS = [str(uuid.UUID(int=random.Random(7).getrandbits(128) + i)) for i in range(2000)]
ASCII_STRINGS += [str(i) for i in range(2000)] + [""]
SEEDS = ["", "seed", "exp-checkout-2024", "é\U0001f600 seed", "\x00"]


@pytest.mark.parametrize("utf16", [False, True], ids=["codepoints", "utf16"])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{i}" for i in range(len(SEEDS))])
def test_hash_many_matches_scalar_on_random_unicode(seed: str, version: int, utf16: bool) -> None:
    expected = [hash_unit(seed, v, version, utf16=utf16) for v in RANDOM_STRINGS]
    actual = hash_many(seed, RANDOM_STRINGS, version, utf16=utf16)
    assert actual is not None
    assert actual.tolist() == expected


@pytest.mark.parametrize("version", [1, 2])
def test_hash_many_matches_scalar_on_ascii_ids(version: int) -> None:
    expected = [hash_unit("exp", v, version) for v in ASCII_STRINGS]
    actual = hash_many("exp", ASCII_STRINGS, version)
    assert actual is not None
    assert actual.tolist() == expected


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([str(uuid.UUID(int=i)) for i in range(300)], id="fixed-width-ascii"),
        pytest.param(["é\U0001f600x"] * 5 + ["中文字"] * 5, id="fixed-width-unicode"),
        pytest.param(["", "", ""], id="all-empty"),
        pytest.param([], id="no-values"),
        pytest.param(["a" * 1000, "b"], id="long-outlier"),
    ],
)
@pytest.mark.parametrize("utf16", [False, True], ids=["codepoints", "utf16"])
def test_hash_many_batch_shapes(values: list[str], utf16: bool) -> None:
    for version in (1, 2):
        actual = hash_many("s", values, version, utf16=utf16)
        assert actual is not None
        assert actual.tolist() == [hash_unit("s", v, version, utf16=utf16) for v in values]


def test_hash_many_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignment, "_CHUNK_ROWS", 7)
    values = RANDOM_STRINGS[:500]
    for version in (1, 2):
        actual = hash_many("chunked", values, version)
        assert actual is not None
        assert actual.tolist() == [hash_unit("chunked", v, version) for v in values]


def test_hash_many_accepts_numpy_tuples_and_iterables() -> None:
    values = ["alpha", "beta", "é\U0001f600", ""]
    expected = [hash_unit("s", v, 2) for v in values]
    for container in (values, tuple(values), np.array(values), iter(values)):
        actual = hash_many("s", container, 2)  # type: ignore[arg-type]
        assert actual is not None
        assert actual.tolist() == expected


def test_hash_many_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        hash_many("s", ["1", 2], 2)  # type: ignore[list-item]


def test_hash_is_independent_of_batch_composition() -> None:
    values = RANDOM_STRINGS[:1000]
    shuffled = values[::-1]
    forward = hash_many("s", values, 2)
    backward = hash_many("s", shuffled, 2)
    assert forward is not None and backward is not None
    assert forward.tolist() == backward.tolist()[::-1]


# --------------------------------------------------------------------------------------
# Bucket ranges, weights and variation choice
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coverage", "expected"),
    [
        (-5.0, [(0, 0), (0.5, 0.5)]),
        (-0.0001, [(0, 0), (0.5, 0.5)]),
        (0.0, [(0, 0), (0.5, 0.5)]),
        (1.0, [(0, 0.5), (0.5, 1)]),
        (1.0001, [(0, 0.5), (0.5, 1)]),
        (42.0, [(0, 0.5), (0.5, 1)]),
    ],
)
def test_coverage_is_clamped(coverage: float, expected: list[tuple[float, float]]) -> None:
    assert bucket_ranges(2, coverage) == expected


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param([0.5], id="too-short"),
        pytest.param([0.3, 0.3, 0.4], id="too-long"),
        pytest.param([], id="empty"),
        pytest.param([0.5, 0.489], id="sum-0.989"),
        pytest.param([0.5, 0.511], id="sum-1.011"),
        pytest.param([float("nan"), 0.5], id="nan"),
        pytest.param([2.0, 3.0], id="sum-5"),
    ],
)
def test_unusable_weights_fall_back_to_equal(weights: list[float]) -> None:
    assert bucket_ranges(2, 1.0, weights) == [(0, 0.5), (0.5, 1)]


def test_weights_within_tolerance_are_kept_unnormalised() -> None:
    # 0.49 + 0.5 == 0.99 and 0.51 + 0.5 == 1.01 exactly: both bounds are inclusive.
    assert bucket_ranges(2, 1.0, [0.49, 0.5]) == [(0, 0.49), (0.49, 0.99)]
    assert bucket_ranges(2, 1.0, [0.51, 0.5]) == [(0, 0.51), (0.51, 1.01)]
    assert bucket_ranges(2, 1.0, (0.25, 0.75)) == [(0, 0.25), (0.25, 1)]


def test_bucket_ranges_float_arithmetic_matches_sdk_exactly() -> None:
    # Same operations in the same order as the SDKs, no rounding: the end of the first
    # range is 0.2 * 0.2, not 0.04, so a unit hashing to exactly 0.04 is in variation 0.
    ranges = bucket_ranges(3, 0.2, [0.2, 0.3, 0.5])
    assert ranges == [(0.0, 0.2 * 0.2), (0.2, 0.2 + 0.2 * 0.3), (0.2 + 0.3, 0.5 + 0.2 * 0.5)]
    assert choose_variation(0.04, ranges) == 0
    assert bucket_ranges(3) == [(0, 1 / 3), (1 / 3, 1 / 3 + 1 / 3), (2 / 3, 2 / 3 + 1 / 3)]


def test_bucket_ranges_degenerate_counts() -> None:
    assert bucket_ranges(0) == []
    assert bucket_ranges(-3) == []
    assert bucket_ranges(1) == [(0, 1)]


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0.0, 0), (0.2999, 0), (0.3, 1), (0.7, -1), (0.75, -1), (0.8, 3), (0.9999, 3), (1.0, -1)],
)
def test_choose_variation_boundaries(n: float, expected: int) -> None:
    # Half-open ranges: start included, end excluded; the empty range 2 never matches.
    ranges = [(0.0, 0.3), (0.3, 0.7), (0.75, 0.75), (0.8, 1.0)]
    assert choose_variation(n, ranges) == expected
    assert choose_variation_many(np.array([n]), ranges).tolist() == [expected]


def test_choose_variation_first_match_wins_and_empty() -> None:
    overlapping = [(0.0, 0.6), (0.4, 1.0)]
    assert choose_variation(0.5, overlapping) == 0
    assert choose_variation_many(np.array([0.5, 0.7]), overlapping).tolist() == [0, 1]
    assert choose_variation(0.5, []) == -1
    assert choose_variation_many(np.array([0.5]), []).tolist() == [EXCLUDED]


def test_in_namespace_half_open_interval() -> None:
    n = hash_unit("__ns", "user-1", 1)
    assert n is not None
    assert in_namespace("user-1", ("ns", n, n + 0.001))
    assert not in_namespace("user-1", ("ns", 0.0, n))
    assert not in_namespace("user-1", ("ns", n, n))
    assert in_namespace("user-1", ("ns", 0.0, 1.0))


# --------------------------------------------------------------------------------------
# assign / assign_many
# --------------------------------------------------------------------------------------


def _assign_reference(
    seed: str,
    unit_id: str,
    num_variations: int,
    weights: list[float] | None,
    coverage: float,
    namespace: tuple[str, float, float] | None,
    hash_version: int,
) -> int | None:
    """GrowthBook's _run bucketing steps written out with the primitives."""
    if num_variations < 2 or unit_id == "":
        return None
    if namespace is not None and not in_namespace(unit_id, namespace):
        return None
    n = hash_unit(seed, unit_id, hash_version)
    if n is None:
        return None
    index = choose_variation(n, bucket_ranges(num_variations, coverage, weights))
    return None if index == -1 else index


ASSIGN_CONFIGS = [
    pytest.param({"num_variations": 2}, id="50-50"),
    pytest.param({"num_variations": 3, "weights": [0.2, 0.3, 0.5]}, id="weighted-3"),
    pytest.param({"num_variations": 2, "coverage": 0.37}, id="coverage-0.37"),
    pytest.param({"num_variations": 4, "coverage": 1.7}, id="coverage-above-1"),
    pytest.param({"num_variations": 2, "coverage": -1.0}, id="coverage-negative"),
    pytest.param({"num_variations": 3, "weights": [0.5, 0.5]}, id="weights-wrong-length"),
    pytest.param({"num_variations": 2, "namespace": ("checkout", 0.2, 0.7)}, id="namespace"),
    pytest.param({"num_variations": 2, "hash_version": 1}, id="hash-v1"),
    pytest.param(
        {
            "num_variations": 3,
            "weights": [0.1, 0.6, 0.3],
            "coverage": 0.8,
            "namespace": ("ns", 0.0, 0.5),
            "hash_version": 1,
        },
        id="everything",
    ),
]


@pytest.mark.parametrize("config", ASSIGN_CONFIGS)
def test_assign_matches_reference_and_vectorized(config: dict[str, Any]) -> None:
    unit_ids = RANDOM_STRINGS[:1500] + ASCII_STRINGS[:1500]
    full = {
        "weights": None,
        "coverage": 1.0,
        "namespace": None,
        "hash_version": 2,
        **config,
    }
    expected = [_assign_reference("exp-seed", u, **full) for u in unit_ids]
    scalar = [assign(seed="exp-seed", unit_id=u, **config) for u in unit_ids]
    assert scalar == expected
    vectorized = assign_many(seed="exp-seed", unit_ids=unit_ids, **config)
    assert vectorized.dtype == np.int64
    assert vectorized.tolist() == [EXCLUDED if v is None else v for v in expected]


def test_assign_excludes_empty_unit_ids() -> None:
    assert assign(seed="s", unit_id="", num_variations=2) is None
    assert assign_many(seed="s", unit_ids=["", "x"], num_variations=2)[0] == EXCLUDED


@pytest.mark.parametrize("num_variations", [-1, 0, 1])
def test_assign_needs_two_variations(num_variations: int) -> None:
    assert assign(seed="s", unit_id="u", num_variations=num_variations) is None
    out = assign_many(seed="s", unit_ids=["u", "v"], num_variations=num_variations)
    assert out.tolist() == [EXCLUDED, EXCLUDED]


def test_assign_requires_a_variation_count() -> None:
    with pytest.raises(TypeError):
        assign(seed="s", unit_id="u")
    with pytest.raises(TypeError):
        assign_many(seed="s", unit_ids=["u"])


def test_assign_infers_variation_count_from_weights() -> None:
    ids = ASCII_STRINGS[:500]
    by_weights = [assign(seed="s", unit_id=u, weights=[0.1, 0.2, 0.7]) for u in ids]
    explicit = [assign(seed="s", unit_id=u, num_variations=3, weights=[0.1, 0.2, 0.7]) for u in ids]
    assert by_weights == explicit
    assert set(by_weights) == {0, 1, 2}


def test_assign_explicit_ranges_take_precedence() -> None:
    ids = ASCII_STRINGS[:2000]
    ranges = [(0.0, 0.1), (0.9, 1.0)]
    scalar = [
        assign(seed="s", unit_id=u, ranges=ranges, weights=[0.5, 0.5], coverage=0.0) for u in ids
    ]
    for u, got in zip(ids, scalar, strict=True):
        n = hash_unit("s", u, 2)
        assert n is not None
        want = choose_variation(n, ranges)
        assert got == (None if want == -1 else want)
    vectorized = assign_many(seed="s", unit_ids=ids, ranges=ranges)
    assert vectorized.tolist() == [EXCLUDED if v is None else v for v in scalar]


def test_assign_coverage_none_means_full_and_zero_excludes_all() -> None:
    ids = ASCII_STRINGS[:300]
    full = [assign(seed="s", unit_id=u, num_variations=2, coverage=None) for u in ids]
    assert full == [assign(seed="s", unit_id=u, num_variations=2) for u in ids]
    assert None not in full[:-1]  # the last ASCII id is the empty string
    zero = assign_many(seed="s", unit_ids=ids, num_variations=2, coverage=0.0)
    assert (zero == EXCLUDED).all()
    nan = assign_many(seed="s", unit_ids=ids, num_variations=2, coverage=float("nan"))
    assert (nan == EXCLUDED).all()


def test_raising_coverage_never_moves_an_included_unit() -> None:
    ids = ASCII_STRINGS
    low = assign_many(seed="ramp", unit_ids=ids, num_variations=3, coverage=0.3)
    high = assign_many(seed="ramp", unit_ids=ids, num_variations=3, coverage=0.9)
    included = low != EXCLUDED
    assert included.any()
    assert np.array_equal(low[included], high[included])
    assert (high != EXCLUDED).sum() > included.sum()


def test_assign_utf16_mode_matches_scalar() -> None:
    ids = RANDOM_STRINGS[:2000]
    scalar = [assign(seed="s", unit_id=u, num_variations=2, utf16=True) for u in ids]
    vectorized = assign_many(seed="s", unit_ids=ids, num_variations=2, utf16=True)
    assert vectorized.tolist() == [EXCLUDED if v is None else v for v in scalar]


def test_assignment_is_deterministic() -> None:
    ids = [f"user-{i}" for i in range(2000)]
    first = assign_many(seed="det", unit_ids=ids, num_variations=3)
    second = assign_many(seed="det", unit_ids=list(ids), num_variations=3)
    assert np.array_equal(first, second)
    assert [assign(seed="det", unit_id=u, num_variations=3) for u in ids] == first.tolist()
    # A different seed reshuffles units.
    other = assign_many(seed="det-2", unit_ids=ids, num_variations=3)
    assert not np.array_equal(first, other)


def _assert_binomial(count: int, total: int, p: float, sigmas: float = 4.5) -> None:
    mean = total * p
    sd = math.sqrt(total * p * (1 - p))
    assert abs(count - mean) <= sigmas * sd, (count, mean, sd)


@pytest.mark.parametrize("hash_version", [1, 2])
def test_even_split_distribution(hash_version: int) -> None:
    ids = [str(uuid.UUID(int=random.Random(99).getrandbits(128) ^ i)) for i in range(100_000)]
    out = assign_many(seed="dist", unit_ids=ids, num_variations=2, hash_version=hash_version)
    assert (out != EXCLUDED).all()
    _assert_binomial(int((out == 0).sum()), len(ids), 0.5)


def test_weighted_coverage_distribution() -> None:
    ids = [str(i) for i in range(100_000)]
    out = assign_many(
        seed="dist-w", unit_ids=ids, weights=[0.2, 0.3, 0.5], coverage=0.5, hash_version=2
    )
    for index, p in enumerate([0.1, 0.15, 0.25]):
        _assert_binomial(int((out == index).sum()), len(ids), p)
    _assert_binomial(int((out == EXCLUDED).sum()), len(ids), 0.5)
