from __future__ import annotations

import datetime as dt
import io

import pytest
from django.db import connection

from abtest.errors import ServiceError
from segmentation.models import (
    Customer,
    CustomerMetrics,
    Segment,
    SegmentMembership,
    SegmentSizeSnapshot,
)
from segmentation.services.segments import (
    CsvIdentifiers,
    SegmentRefreshResult,
    SegmentRuleInvalid,
    segment_create,
    segment_definition_validate,
    segment_delete,
    segment_refresh,
    segment_update,
    segments_refresh_all,
    segments_refresh_order,
    static_segment_add,
    static_segment_parse_csv,
    static_segment_remove,
)
from segmentation.tests.factories import CustomerFactory, SegmentFactory
from segmentation.tests.rules_helpers import DAY, NOW, make_people

pytestmark = pytest.mark.django_db

SUBSCRIBED = {"all": [{"field": "subscription_status", "op": "eq", "value": "subscribed"}]}


def members(segment: Segment) -> set[str]:
    return set(
        SegmentMembership.objects.filter(segment=segment, left_at__isnull=True).values_list(
            "customer__external_id", flat=True
        )
    )


def rule_segment(slug: str, rule: dict, **kw) -> Segment:
    return segment_create(name=slug.title(), slug=slug, kind="rule", rule=rule, **kw)


# --- Create, update, delete ----------------------------------------------------------------------


def test_create_rule_segment_generates_unique_slugs(marketer):
    first = segment_create(name="Big spenders!", kind="rule", rule=SUBSCRIBED, created_by=marketer)
    second = segment_create(name="Big Spenders", kind="rule", rule=SUBSCRIBED)
    third = segment_create(name="big spenders", kind="rule", rule=SUBSCRIBED)
    assert (first.slug, second.slug, third.slug) == (
        "big-spenders",
        "big-spenders-2",
        "big-spenders-3",
    )
    assert first.created_by == marketer and first.kind == "rule" and first.rule == SUBSCRIBED
    assert first.size == 0 and first.refreshed_at is None
    assert segment_create(name="!!!", kind="static").slug == "segment"


def test_create_refuses_bad_input():
    with pytest.raises(ServiceError) as caught:
        segment_create(name="  ", kind="rule", rule=SUBSCRIBED)
    assert caught.value.field == "name"
    with pytest.raises(ServiceError) as caught:
        segment_create(name="x", kind="smart", rule=SUBSCRIBED)
    assert caught.value.field == "kind"
    segment_create(name="Taken", kind="static", slug="taken")
    with pytest.raises(ServiceError) as caught:
        segment_create(name="Other", kind="static", slug="taken")
    assert caught.value.code == "taken"
    with pytest.raises(ServiceError) as caught:
        segment_create(name="Other", kind="static", slug="Not A Slug")
    assert caught.value.field == "slug"
    with pytest.raises(ServiceError, match="needs a rule"):
        segment_create(name="x", kind="rule")
    with pytest.raises(ServiceError, match="Static segments have no rule"):
        segment_create(name="x", kind="static", rule=SUBSCRIBED)


def test_create_reports_an_invalid_rule_with_its_path():
    rule = {"all": [{"any": [{"field": "metrics.frequncy", "op": "gte", "value": 3}]}]}
    with pytest.raises(SegmentRuleInvalid) as caught:
        segment_create(name="x", kind="rule", rule=rule)
    assert caught.value.path == "all[0].any[0]"
    assert caught.value.field == "rule" and caught.value.code == "invalid_rule"
    assert caught.value.message.startswith("all[0].any[0]: metrics.frequncy is not a known field")
    assert isinstance(caught.value, ServiceError)
    with pytest.raises(SegmentRuleInvalid, match="segment 'ghost' does not exist"):
        segment_create(name="x", kind="rule", rule={"all": [{"segment": "ghost", "op": "in"}]})
    assert not Segment.objects.filter(kind="rule").exists()


@pytest.mark.parametrize(
    "rule",
    [
        None,
        {},
        {"r": [1, 5]},
        {"r": [1, 5], "f": [1, 6]},
        {"r": [0, 5], "f": [1, 5]},
        {"r": [4, 2], "f": [1, 5]},
        {"r": [1, 5], "f": [1]},
        {"r": [1, 5], "f": ["1", 5]},
        {"r": [1, 5], "f": [1, 5], "m": [1, 5]},
    ],
)
def test_rfm_segments_only_take_r_and_f_ranges(rule):
    with pytest.raises(ServiceError, match="An RFM rule"):
        segment_create(name="Odd", kind="rfm", rule=rule)


def test_rfm_segment_goes_last_in_matching_order():
    last = Segment.objects.filter(kind="rfm").order_by("-position").first()
    segment = segment_create(name="Whales", kind="rfm", rule={"r": [1, 5], "f": [5, 5]})
    assert segment.rule == {"r": [1, 5], "f": [5, 5]}
    assert segment.position == (last.position + 1 if last else 0)


def test_self_direct_and_indirect_cycles_are_rejected_at_save():
    a = rule_segment("a", SUBSCRIBED)
    with pytest.raises(SegmentRuleInvalid) as caught:
        segment_update(segment=a, rule={"all": [{"segment": "a", "op": "in"}]})
    assert caught.value.path == "all[0]"
    assert "segment reference cycle: a -> a" in caught.value.message

    rule_segment("b", {"all": [{"segment": "a", "op": "in"}]})
    with pytest.raises(SegmentRuleInvalid, match="a -> b -> a"):
        segment_update(segment=a, rule={"any": [{"segment": "b", "op": "not_in"}]})

    rule_segment("c", {"all": [{"segment": "b", "op": "in"}]})
    with pytest.raises(SegmentRuleInvalid) as caught:
        segment_update(
            segment=a, rule={"all": [SUBSCRIBED, {"any": [{"segment": "c", "op": "in"}]}]}
        )
    assert caught.value.path == "all[1].any[0]"
    assert caught.value.message.endswith("segment reference cycle: a -> c -> b -> a")
    a.refresh_from_db()
    assert a.rule == SUBSCRIBED
    # Referencing without a cycle is fine.
    d = rule_segment("d", {"all": [{"segment": "c", "op": "in"}, {"segment": "a", "op": "in"}]})
    assert d.pk


def test_update_changes_what_is_given():
    segment = rule_segment("mine", SUBSCRIBED, description="old")
    segment = segment_update(segment=segment, name=" New name ", description="new")
    segment.refresh_from_db()
    assert (segment.name, segment.description, segment.rule) == ("New name", "new", SUBSCRIBED)
    segment_update(segment=segment, slug="renamed")
    assert Segment.objects.get(pk=segment.pk).slug == "renamed"
    with pytest.raises(SegmentRuleInvalid):
        segment_update(segment=segment, rule={"all": [{"field": "nope", "op": "eq", "value": 1}]})
    static = segment_create(name="Hand", kind="static")
    with pytest.raises(ServiceError, match="Static segments have no rule"):
        segment_update(segment=static, rule=SUBSCRIBED)


def test_definition_validation_for_forms():
    assert segment_definition_validate(kind="static", rule={}) == {}
    assert segment_definition_validate(kind="rfm", rule={"r": [1, 2], "f": (3, 5)}) == {
        "r": [1, 2],
        "f": [3, 5],
    }
    assert segment_definition_validate(kind="rule", rule=SUBSCRIBED, slug="x") == SUBSCRIBED
    rule_segment("a", SUBSCRIBED)
    rule_segment("b", {"all": [{"segment": "a", "op": "in"}]})
    with pytest.raises(SegmentRuleInvalid, match="a -> b -> a"):
        segment_definition_validate(
            kind="rule", rule={"all": [{"segment": "b", "op": "in"}]}, slug="a"
        )
    with pytest.raises(ServiceError) as caught:
        segment_definition_validate(kind="nope", rule=None)
    assert caught.value.field == "kind"


def test_referenced_segment_keeps_its_slug_and_cannot_be_deleted():
    base = segment_create(name="Base", kind="static")
    user = rule_segment("user", {"all": [{"segment": "base", "op": "in"}]})
    with pytest.raises(ServiceError, match=r"used by the rules of 'User' \(user\)") as caught:
        segment_update(segment=base, slug="base-2")
    assert caught.value.code == "referenced"
    with pytest.raises(ServiceError, match=r"used by the rules of 'User' \(user\)"):
        segment_delete(segment=base)
    segment_delete(segment=user)
    segment_delete(segment=base)
    assert not Segment.objects.filter(slug__in=["base", "user"]).exists()


# --- Refresh ------------------------------------------------------------------------------------


@pytest.fixture
def people(db):
    return make_people()


def test_refresh_records_joins_and_leaves_across_refreshes(people):
    segment = rule_segment("subscribed", SUBSCRIBED)
    first = segment_refresh(segment=segment, now=NOW)
    assert (first.joined, first.left, first.size) == (2, 0, 2)
    assert members(segment) == {"alice", "carol"}
    segment.refresh_from_db()
    assert segment.size == 2 and segment.refreshed_at == NOW

    # Nothing changed: nothing recorded.
    again = segment_refresh(segment=segment, now=NOW + dt.timedelta(hours=1))
    assert (again.joined, again.left, again.size) == (0, 0, 2)

    # carol leaves, bob joins.
    people["carol"].subscription_status = "unsubscribed"
    people["carol"].save()
    people["bob"].subscription_status = "subscribed"
    people["bob"].save()
    second = segment_refresh(segment=segment, now=NOW + DAY)
    assert (second.joined, second.left, second.size) == (1, 1, 2)
    assert members(segment) == {"alice", "bob"}
    carol = SegmentMembership.objects.get(segment=segment, customer=people["carol"])
    assert (carol.joined_at, carol.left_at) == (NOW, NOW + DAY)
    bob = SegmentMembership.objects.get(segment=segment, customer=people["bob"])
    assert (bob.joined_at, bob.left_at) == (NOW + DAY, None)

    # carol comes back: a second stay, the first kept as history.
    people["carol"].subscription_status = "subscribed"
    people["carol"].save()
    third = segment_refresh(segment=segment, now=NOW + 2 * DAY)
    assert (third.joined, third.left, third.size) == (1, 0, 3)
    stays = list(
        SegmentMembership.objects.filter(segment=segment, customer=people["carol"])
        .order_by("joined_at")
        .values_list("joined_at", "left_at")
    )
    assert stays == [(NOW, NOW + DAY), (NOW + 2 * DAY, None)]
    alice = SegmentMembership.objects.get(segment=segment, customer=people["alice"])
    assert (alice.joined_at, alice.left_at) == (NOW, None)

    # Everyone leaves; then alice comes back to an empty segment (no current member: every
    # target joins without the anti-join).
    Customer.objects.update(subscription_status="bounced")
    fourth = segment_refresh(segment=segment, now=NOW + 3 * DAY)
    assert (fourth.joined, fourth.left, fourth.size) == (0, 3, 0)
    Customer.objects.filter(pk=people["alice"].pk).update(subscription_status="subscribed")
    fifth = segment_refresh(segment=segment, now=NOW + 4 * DAY)
    assert (fifth.joined, fifth.left, fifth.size) == (1, 0, 1)
    assert members(segment) == {"alice"}
    stays = SegmentMembership.objects.filter(segment=segment, customer=people["alice"])
    assert sorted(stays.values_list("joined_at", "left_at")) == [
        (NOW, NOW + 3 * DAY),
        (NOW + 4 * DAY, None),
    ]


def test_a_refresh_as_of_an_earlier_moment_records_no_history_before_the_last(people):
    segment = rule_segment(
        "recent",
        {"all": [{"field": "metrics.last_purchase_at", "op": "within_last_days", "value": 7}]},
    )
    assert segment_refresh(segment=segment, now=NOW + 10 * DAY).size == 0
    earlier = segment_refresh(segment=segment, now=NOW)  # the rule as of NOW: one buyer
    assert (earlier.joined, earlier.size) == (1, 1)
    stay = SegmentMembership.objects.get(segment=segment)
    assert stay.joined_at == NOW + 10 * DAY  # recorded at the last refresh's time
    segment.refresh_from_db()
    assert segment.refreshed_at == NOW + 10 * DAY
    later = segment_refresh(segment=segment, now=NOW + 11 * DAY)
    assert (later.left, later.size) == (1, 0)
    stay.refresh_from_db()
    assert stay.left_at == NOW + 11 * DAY >= stay.joined_at
    assert set(
        SegmentSizeSnapshot.objects.filter(segment=segment).values_list("date", flat=True)
    ) == {
        (NOW + 10 * DAY).date(),
        (NOW + 11 * DAY).date(),
    }


def test_refresh_snapshots_add_up_over_the_day(people):
    segment = rule_segment("subscribed", SUBSCRIBED)
    segment_refresh(segment=segment, now=NOW)
    people["carol"].subscription_status = "bounced"
    people["carol"].save()
    segment_refresh(segment=segment, now=NOW + dt.timedelta(hours=2))
    snapshots = list(
        SegmentSizeSnapshot.objects.filter(segment=segment).values_list(
            "date", "size", "joined", "left"
        )
    )
    assert snapshots == [(NOW.date(), 1, 2, 1)]
    people["dave"].subscription_status = "subscribed"
    people["dave"].save()
    segment_refresh(segment=segment, now=NOW + DAY)
    snapshots = list(
        SegmentSizeSnapshot.objects.filter(segment=segment).values_list(
            "date", "size", "joined", "left"
        )
    )
    assert snapshots == [(NOW.date(), 1, 2, 1), ((NOW + DAY).date(), 2, 1, 0)]


def test_refresh_uses_now_for_windows(people):
    segment = rule_segment(
        "recent",
        {"all": [{"field": "metrics.last_purchase_at", "op": "within_last_days", "value": 7}]},
    )
    assert segment_refresh(segment=segment, now=NOW).size == 1
    result = segment_refresh(segment=segment, now=NOW + 10 * DAY)
    assert (result.joined, result.left, result.size) == (0, 1, 0)


def test_refresh_of_a_rule_that_matches_nobody_or_everybody(people):
    nobody = rule_segment("nobody", {"any": []})
    everybody = rule_segment("everybody", {"all": []})
    assert segment_refresh(segment=nobody, now=NOW).size == 0
    assert segment_refresh(segment=everybody, now=NOW).size == 4
    segment_update(segment=everybody, rule={"any": []})
    assert segment_refresh(segment=everybody, now=NOW + DAY) == SegmentRefreshResult(
        joined=0, left=4, size=0, slug="everybody", seconds=pytest.approx(0, abs=5)
    )


def test_rfm_segment_holds_customers_with_its_label(people):
    champions, _ = Segment.objects.get_or_create(
        slug="champions",
        defaults={"name": "Champions", "kind": "rfm", "rule": {"r": [4, 5], "f": [4, 5]}},
    )
    assert segment_refresh(segment=champions, now=NOW).size == 1
    assert members(champions) == {"alice"}
    CustomerMetrics.objects.filter(customer=people["bob"]).update(rfm_segment="champions")
    CustomerMetrics.objects.filter(customer=people["alice"]).update(rfm_segment="loyal")
    result = segment_refresh(segment=champions, now=NOW + DAY)
    assert (result.joined, result.left) == (1, 1)
    assert members(champions) == {"bob"}


def test_renaming_an_rfm_segment_keeps_its_members(people):
    champions, _ = Segment.objects.get_or_create(
        slug="champions",
        defaults={"name": "Champions", "kind": "rfm", "rule": {"r": [4, 5], "f": [4, 5]}},
    )
    assert segment_refresh(segment=champions, now=NOW).size == 1
    champions = segment_update(segment=champions, slug="champs")
    result = segment_refresh(segment=champions, now=NOW + DAY)
    assert (result.joined, result.left, result.size) == (0, 0, 1)
    assert CustomerMetrics.objects.get(customer=people["alice"]).rfm_segment == "champs"


def test_refresh_all_moves_customers_between_rfm_segments(people):
    def rfm(slug, r):
        segment, _ = Segment.objects.get_or_create(
            slug=slug, defaults={"name": slug.title(), "kind": "rfm", "rule": {"r": r, "f": r}}
        )
        return segment

    champions, loyal = rfm("champions", [4, 5]), rfm("loyal", [3, 3])
    CustomerMetrics.objects.filter(customer=people["alice"]).update(rfm_segment="champions")
    CustomerMetrics.objects.filter(customer=people["bob"]).update(rfm_segment="loyal")
    segments_refresh_all(now=NOW)
    assert (members(champions), members(loyal)) == ({"alice"}, {"bob"})

    CustomerMetrics.objects.filter(customer=people["alice"]).update(rfm_segment="loyal")
    CustomerMetrics.objects.filter(customer=people["bob"]).update(rfm_segment="champions")
    results = {r.slug: r for r in segments_refresh_all(now=NOW + DAY)}
    assert (members(champions), members(loyal)) == ({"bob"}, {"alice"})
    assert (results["champions"].joined, results["champions"].left) == (1, 1)
    with connection.cursor() as cursor:  # the shared RFM target table is gone
        if connection.vendor == "postgresql":
            cursor.execute("SELECT to_regclass('pg_temp.rfm_targets')")
            assert cursor.fetchone()[0] is None


def test_static_refresh_keeps_members_and_records_size(people):
    static = segment_create(name="Hand", kind="static")
    static_segment_add(segment=static, external_ids=["alice", "bob"], now=NOW)
    result = segment_refresh(segment=static, now=NOW + DAY)
    assert (result.joined, result.left, result.size) == (0, 0, 2)
    assert members(static) == {"alice", "bob"}


def test_refresh_is_set_based(people, django_assert_max_num_queries):
    for n in range(30):
        CustomerFactory(external_id=f"extra{n}")
    segment = rule_segment(
        "busy",
        {
            "any": [
                SUBSCRIBED,
                {"event": "purchase", "op": "never"},
                {"field": "attributes.plan", "op": "eq", "value": "pro"},
            ]
        },
    )
    # 16: one of them reads the event summary's cutoff (PostgreSQL), one looks for a current
    # member (none: every target joins without an anti-join).
    with django_assert_max_num_queries(16):
        result = segment_refresh(segment=segment, now=NOW)
    assert result.joined == 34


def test_segment_references_follow_the_referenced_membership(people):
    vip = segment_create(name="VIP", kind="static")
    static_segment_add(segment=vip, external_ids=["bob", "dave"], now=NOW)
    not_vip = rule_segment("not-vip", {"all": [{"segment": "vip", "op": "not_in"}]})
    vip_subscribed = rule_segment(
        "vip-subscribed",
        {"all": [{"segment": "vip", "op": "in"}, {"segment": "not-vip", "op": "not_in"}]},
    )
    segments_refresh_all(now=NOW)
    assert members(not_vip) == {"alice", "carol"}
    assert members(vip_subscribed) == {"bob", "dave"}


def test_refresh_all_goes_in_dependency_order(people):
    Segment.objects.filter(kind="rfm").delete()
    CustomerMetrics.objects.filter(customer=people["alice"]).update(rfm_segment="rfm-a")
    rfm_b = segment_create(name="Rfm b", kind="rfm", rule={"r": [1, 2], "f": [1, 5]})
    rfm_a = segment_create(name="Rfm a", kind="rfm", rule={"r": [3, 5], "f": [1, 5]})
    static = segment_create(name="Hand", kind="static")
    base = rule_segment("base", SUBSCRIBED)
    mid = rule_segment(
        "mid", {"all": [{"segment": "base", "op": "in"}, {"segment": "rfm-a", "op": "not_in"}]}
    )
    top = rule_segment(
        "aaa-top", {"any": [{"segment": "mid", "op": "in"}, {"segment": "hand", "op": "in"}]}
    )
    lone = rule_segment("lone", SUBSCRIBED)
    static_segment_add(segment=static, external_ids=["dave"], now=NOW)
    seen = []
    results = segments_refresh_all(now=NOW + DAY, progress=seen.append)
    order = [r.slug for r in results]
    assert order[:2] == [rfm_b.slug, rfm_a.slug]
    assert order.index("base") < order.index("mid") < order.index("aaa-top")
    assert set(order) == {"rfm-b", "rfm-a", "base", "mid", "aaa-top", "lone"}
    names = {s.slug: s.name for s in Segment.objects.all()}
    assert seen == [f"Segment {names[slug]} ({slug})" for slug in order]
    static.refresh_from_db()
    assert static.size == 1 and static.refreshed_at == NOW
    # The chain saw fresh inputs in one pass: mid = subscribed and not rfm-a (alice).
    assert members(mid) == {"carol"} and members(top) == {"carol", "dave"}
    assert members(base) == {"alice", "carol"} and members(lone) == {"alice", "carol"}
    assert {r.slug: r.size for r in results}["aaa-top"] == 2


def test_refresh_order_puts_cycles_last_without_failing():
    a = SegmentFactory(slug="a", rule={"all": [{"segment": "b", "op": "in"}]}, name="A")
    b = SegmentFactory(slug="b", rule={"all": [{"segment": "a", "op": "in"}]}, name="B")
    c = SegmentFactory(slug="c", rule={"all": []}, name="C")
    assert [s.slug for s in segments_refresh_order([a, b, c])] == ["c", "a", "b"]


def test_refresh_all_reports_a_broken_rule_and_goes_on(people):
    broken = SegmentFactory(
        slug="broken", rule={"all": [{"field": "nope", "op": "eq", "value": 1}]}
    )
    good = rule_segment("good", SUBSCRIBED)
    results = {r.slug: r for r in segments_refresh_all(now=NOW)}
    assert "nope is not a known field" in results["broken"].error
    assert results["good"].size == 2 and not results["good"].error
    with pytest.raises(SegmentRuleInvalid):
        segment_refresh(segment=broken, now=NOW)
    assert members(good) == {"alice", "carol"}


# --- Static segments ---------------------------------------------------------------------------


def test_static_add_by_id_external_id_and_email(people):
    static = segment_create(name="Hand", kind="static")
    added, unknown = static_segment_add(
        segment=static,
        customer_ids=[people["alice"].pk, 999_999],
        external_ids=["bob", "ghost", "bob"],
        emails=["CAROL@example.COM", "nobody@example.com"],
        now=NOW,
    )
    assert added == 3
    assert unknown == ["999999", "ghost", "nobody@example.com"]
    assert members(static) == {"alice", "bob", "carol"}
    # Adding current members again adds nobody.
    assert static_segment_add(segment=static, external_ids=["alice", "dave"], now=NOW) == (1, [])
    static.refresh_from_db()
    assert static.size == 4
    snapshot = SegmentSizeSnapshot.objects.get(segment=static)
    assert (snapshot.size, snapshot.joined, snapshot.left) == (4, 4, 0)


def test_static_remove_keeps_history(people):
    static = segment_create(name="Hand", kind="static")
    static_segment_add(segment=static, external_ids=["alice", "bob"], now=NOW)
    removed, unknown = static_segment_remove(
        segment=static, external_ids=["alice", "carol", "ghost"], now=NOW + DAY
    )
    assert (removed, unknown) == (1, ["ghost"])
    assert members(static) == {"bob"}
    static_segment_add(segment=static, emails=["alice.smith@example.com"], now=NOW + 2 * DAY)
    stays = list(
        SegmentMembership.objects.filter(segment=static, customer=people["alice"])
        .order_by("joined_at")
        .values_list("joined_at", "left_at")
    )
    assert stays == [(NOW, NOW + DAY), (NOW + 2 * DAY, None)]
    static.refresh_from_db()
    assert static.size == 2


def test_static_operations_are_set_based(people, django_assert_max_num_queries):
    customers = [CustomerFactory(external_id=f"bulk{n}") for n in range(120)]
    static = segment_create(name="Hand", kind="static")
    with django_assert_max_num_queries(10):
        added, _ = static_segment_add(
            segment=static, external_ids=[c.external_id for c in customers]
        )
    assert added == 120
    with django_assert_max_num_queries(10):
        removed, _ = static_segment_remove(segment=static, customer_ids=[c.pk for c in customers])
    assert removed == 120


def test_static_operations_refuse_other_kinds(people):
    segment = rule_segment("ruled", SUBSCRIBED)
    with pytest.raises(ServiceError, match="only static segments") as caught:
        static_segment_add(segment=segment, external_ids=["alice"])
    assert caught.value.code == "not_static"
    with pytest.raises(ServiceError, match="only static segments"):
        static_segment_remove(segment=segment, external_ids=["alice"])
    with pytest.raises(ServiceError, match="not a customer id"):
        static_segment_add(segment=segment_create(name="s", kind="static"), customer_ids=["x"])


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_with_an_email_header():
    parsed = static_segment_parse_csv("Email,name\nA@x.com,Ann\n\n b@x.com ,Bob\nA@x.com,again\n")
    assert parsed == CsvIdentifiers(emails=["A@x.com", "b@x.com"], external_ids=[])
    assert len(parsed) == 2


def test_csv_with_external_id_and_email_columns_prefers_the_external_id():
    parsed = static_segment_parse_csv("external_id;email\nc1;a@x.com\n;b@x.com\nc3;\n")
    assert parsed.external_ids == ["c1", "c3"]
    assert parsed.emails == ["b@x.com"]
    assert parsed.as_kwargs() == {"emails": ["b@x.com"], "external_ids": ["c1", "c3"]}


def test_csv_single_column_without_header_detects_emails():
    parsed = static_segment_parse_csv(b"\xef\xbb\xbfalice@example.com\nc42\n\nbob@example.com\n")
    assert parsed.emails == ["alice@example.com", "bob@example.com"]
    assert parsed.external_ids == ["c42"]


def test_csv_from_an_uploaded_file_with_bom_and_header():
    upload = io.BytesIO("\ufeffexternal_id\r\nc1\r\nc2\r\n".encode())
    assert static_segment_parse_csv(upload).external_ids == ["c1", "c2"]
    assert static_segment_parse_csv(io.StringIO("email\n")) == CsvIdentifiers([], [])
    assert static_segment_parse_csv("") == CsvIdentifiers([], [])


def test_csv_errors():
    with pytest.raises(ServiceError, match="not UTF-8"):
        static_segment_parse_csv(b"\xff\xfe\x00a")
    with pytest.raises(ServiceError, match="Line 1 has several columns"):
        static_segment_parse_csv("a@x.com,b@x.com\n")


def test_csv_round_trip_reports_unknown_identifiers(people):
    static = segment_create(name="Hand", kind="static")
    parsed = static_segment_parse_csv("email\nalice.smith@example.com\nghost@example.com\n")
    assert static_segment_add(segment=static, **parsed.as_kwargs()) == (1, ["ghost@example.com"])


def test_slugs_that_are_page_addresses_are_reserved(db):
    assert segment_create(name="New", kind="static").slug == "new-2"
    assert segment_create(name="RFM", kind="static").slug == "rfm-2"
    with pytest.raises(ServiceError, match="reserved"):
        segment_create(name="Preview list", slug="preview", kind="static")


@pytest.mark.postgres
def test_membership_inserts_never_rescan_the_memberships_per_customer(people, require_postgres):
    """On a membership table analyzed while empty, a correlated NOT EXISTS was planned as a
    sequential scan per customer (rescanning the rows being inserted): quadratic."""
    from segmentation.services.segments import _static_add_sql

    static = segment_create(name="Hand", kind="static")
    static_segment_add(segment=static, external_ids=["alice"], now=NOW)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE segmentation_segmentmembership")
        ids = [people[name].pk for name in ("alice", "bob", "carol")]
        sql, params = _static_add_sql(static, ids, NOW)
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "hashed SubPlan" in plan and "Nested Loop" not in plan, plan
    assert static_segment_add(segment=static, customer_ids=ids, now=NOW) == (2, [])
    assert members(static) == {"alice", "bob", "carol"}


@pytest.mark.postgres
def test_refresh_counts_event_windows_by_sorting_not_hashing(people, require_postgres):
    """A refresh's target query runs with hash aggregation off (and its memory and no JIT), so
    an event window's events are counted in runs of sorted rows (measured faster)."""
    from segmentation.services.segments import POSTGRES_SETTINGS

    segment = rule_segment(
        "busy", {"all": [{"event": "page_view", "op": "at_least", "count": 2, "days": 30}]}
    )
    seen = {}

    def spy(execute, sql, params, many, context):
        if "segment_target AS" in sql:
            raw = context["cursor"].cursor
            raw.execute(
                "SELECT current_setting('enable_hashagg'), current_setting('work_mem'), "
                "current_setting('jit')"
            )
            seen["settings"] = raw.fetchone()
            raw.execute(f"EXPLAIN {sql}", params)
            seen["plan"] = "\n".join(row[0] for row in raw.fetchall())
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        segment_refresh(segment=segment, now=NOW)
    assert POSTGRES_SETTINGS["enable_hashagg"] == "off"
    assert seen["settings"] == ("off", POSTGRES_SETTINGS["work_mem"], "off")
    assert "HashAggregate" not in seen["plan"], seen["plan"]
