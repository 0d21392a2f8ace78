"""The builder's form <-> tree <-> rule conversions (pure: no database)."""

from __future__ import annotations

import pytest
from django.http import QueryDict

from segmentation import builder
from segmentation.builder import Condition, Group
from segmentation.rules import MAX_CONDITIONS, MAX_DEPTH, RuleError, rule_validate


def form(**fields: str | list[str]) -> QueryDict:
    """A QueryDict from keyword pairs, ``r_0__op`` standing for ``r-0.op``."""
    data = QueryDict(mutable=True)
    for key, value in fields.items():
        node, _, part = key.partition("__")
        name = f"{node.replace('_', '-')}.{part}"
        if isinstance(value, list):
            data.setlist(name, value)
        else:
            data[name] = value
    return data


RULES = [
    {"all": []},
    {"any": []},
    {"all": [{"field": "metrics.frequency", "op": "gte", "value": 3}]},
    {"all": [{"field": "email", "op": "contains", "value": "@acme"}]},
    {"any": [{"field": "subscription_status", "op": "in", "value": ["subscribed", "bounced"]}]},
    {"all": [{"field": "metrics.monetary", "op": "between", "value": [10, 99.5]}]},
    {"all": [{"field": "created_at", "op": "within_last_days", "value": 30}]},
    {"all": [{"field": "metrics.last_purchase_at", "op": "before", "value": "2024-01-31"}]},
    {"all": [{"field": "locale", "op": "is_set"}]},
    {"all": [{"field": "attributes.plan", "op": "eq", "value": "pro"}]},
    {"all": [{"field": "attributes.seats", "op": "in", "value": [3, "3", True, "a,b"]}]},
    {"all": [{"field": "attributes.code", "op": "eq", "value": "true"}]},
    {"all": [{"field": "attributes.age", "op": "between", "value": [18, 30]}]},
    {"all": [{"event": "purchase", "op": "at_least", "count": 2, "days": 30}]},
    {"all": [{"event": "login", "op": "never"}]},
    {"all": [{"event": "purchase", "op": "fewer_than", "count": 3}]},
    {"all": [{"segment": "champions", "op": "not_in"}]},
    {
        "all": [
            {"field": "metrics.r_score", "op": "gte", "value": 4},
            {
                "any": [
                    {"event": "purchase", "op": "at_least", "count": 1, "days": 7},
                    {"all": [{"field": "first_name", "op": "starts_with", "value": "Al"}]},
                ]
            },
        ]
    },
]


@pytest.mark.parametrize("rule", RULES)
def test_rule_to_tree_and_back_is_lossless(rule):
    rule_validate(rule)
    tree = builder.tree_from_rule(rule)
    assert builder.rule_from_tree(tree) == rule


@pytest.mark.parametrize("rule", RULES)
def test_form_inputs_read_back_to_the_same_rule(rule):
    """What the template posts for a tree (one input per part) reads back to the same rule."""
    tree = builder.tree_from_rule(rule)
    data = QueryDict(mutable=True)
    for node in builder.walk(tree):
        if isinstance(node, Group):
            data[f"{node.id}.kind"] = "group"
            data[f"{node.id}.match"] = node.match
            continue
        data[f"{node.id}.kind"] = "condition"
        for part in ("field", "key", "op", "value", "value2", "count", "days"):
            data[f"{node.id}.{part}"] = getattr(node, part)
    assert builder.rule_from_tree(builder.tree_from_data(data)) == rule


def test_values_are_typed_by_field():
    data = form(
        r__kind="group", r__match="all",
        r_0__kind="condition", r_0__field="metrics.frequency", r_0__op="gte", r_0__value=" 3 ",
        r_1__kind="condition", r_1__field="metrics.monetary", r_1__op="lt", r_1__value="9.5",
        r_2__kind="condition", r_2__field="email", r_2__op="in", r_2__value="a@x.io, b@x.io,",
        r_3__kind="condition", r_3__field="metrics.r_score", r_3__op="in", r_3__values=["4", "5"],
        r_4__kind="condition", r_4__field="attributes", r_4__key="vip", r_4__op="eq",
        r_4__value="true",
        r_5__kind="condition", r_5__field="attributes", r_5__key="zip", r_5__op="eq",
        r_5__value='"01234"',
        r_6__kind="condition", r_6__field="metrics.frequency", r_6__op="gte", r_6__value="lots",
    )  # fmt: skip
    rule = builder.rule_from_tree(builder.tree_from_data(data))
    values = [c.get("value") for c in rule["all"]]
    assert values == [3, 9.5, ["a@x.io", "b@x.io"], [4, 5], True, "01234", "lots"]
    with pytest.raises(RuleError) as caught:
        rule_validate(rule)
    assert caught.value.path == "all[6]"  # the validator names the row that is wrong


def test_empty_values_become_missing_so_the_rule_says_what_is_needed():
    data = form(r__kind="group", r_0__kind="condition", r_0__field="email", r_0__op="eq")
    rule = builder.rule_from_tree(builder.tree_from_data(data))
    assert rule == {"all": [{"field": "email", "op": "eq", "value": None}]}
    with pytest.raises(RuleError, match="needs a value"):
        rule_validate(rule)


def test_ids_are_renumbered_and_order_kept_when_rows_are_missing():
    data = form(
        r__kind="group", r__match="any",
        r_3__kind="condition", r_3__field="email", r_3__op="is_set",
        r_7__kind="group", r_7__match="all",
        r_7_2__kind="condition", r_7_2__field="locale", r_7_2__op="is_set",
        r_10__kind="condition", r_10__field="first_name", r_10__op="is_set",
    )  # fmt: skip
    tree = builder.tree_from_data(data)
    assert [c.id for c in tree.children] == ["r-0", "r-1", "r-2"]
    assert tree.children[1].children[0].id == "r-1-0"
    assert [c.field for c in builder.walk(tree) if isinstance(c, Condition)] == [
        "email",
        "locale",
        "first_name",
    ]


def test_garbage_ids_and_orphans_are_ignored():
    data = form(
        r__kind="group",
        r_0__kind="condition", r_0__field="email", r_0__op="is_set",
        r_0_1__kind="condition", r_0_1__field="email", r_0_1__op="is_set",  # parent is a row
        r_9_9__kind="condition",  # no parent
    )  # fmt: skip
    data["x-1.kind"] = "condition"
    data["r-1.kind"] = "bogus"
    tree = builder.tree_from_data(data)
    assert len(tree.children) == 1 and isinstance(tree.children[0], Condition)


def test_missing_root_gives_an_empty_all_group():
    assert builder.rule_from_tree(builder.tree_from_data(QueryDict())) == {"all": []}


def test_actions_add_remove_and_switch():
    tree = builder.new_tree()
    assert builder.rule_from_tree(tree) == {"all": []}
    tree = builder.apply_action(tree, "add-condition:r")
    assert builder.rule_from_tree(tree) == {"all": [{"field": "", "op": ""}]}
    tree = builder.apply_action(tree, "add-group:r")
    assert isinstance(tree.children[1], Group) and tree.children[1].match == "any"
    tree = builder.apply_action(tree, "add-condition:r-1")
    assert len(tree.children[1].children) == 2
    tree = builder.apply_action(tree, "match:r-1:all")
    assert tree.children[1].match == "all"
    tree = builder.apply_action(tree, "remove:r-0")
    assert tree.children[0].id == "r-0" and isinstance(tree.children[0], Group)
    tree = builder.apply_action(tree, "remove:r")  # the root stays
    tree = builder.apply_action(tree, "nonsense:r-0")
    tree = builder.apply_action(tree, "add-condition:r-0-0")  # not a group: nothing
    assert [n.id for n in builder.walk(tree)] == ["r", "r-0", "r-0-0", "r-0-1"]


def test_groups_cannot_nest_deeper_or_grow_past_the_limits():
    tree = builder.new_tree()
    group_id = "r"
    for _ in range(MAX_DEPTH + 2):
        tree = builder.apply_action(tree, f"add-group:{group_id}")
        last = [n for n in builder.walk(tree) if isinstance(n, Group)][-1]
        group_id = last.id
    depth = max(n.id.count("-") + 1 for n in builder.walk(tree) if isinstance(n, Group))
    assert depth == MAX_DEPTH
    for _ in range(MAX_CONDITIONS + 5):
        tree = builder.apply_action(tree, "add-condition:r")
    assert sum(1 for _ in builder.walk(tree)) - 1 == MAX_CONDITIONS


def test_normalise_picks_a_valid_operator_for_a_new_field():
    tree = Group(
        children=[
            Condition(field="created_at", op="gte"),  # dates have no gte
            Condition(field="metrics.frequency", op="gte"),
            Condition(field="event", op=""),
            Condition(field="segment", op="bogus"),
            Condition(field="attributes", key="plan", op="before"),
        ]
    )
    builder.normalise(builder.renumber(tree))
    assert [c.op for c in tree.children] == ["before", "gte", "at_least", "in", "eq"]
    assert tree.children[2].count == "1"


def test_check_tree_names_unfinished_rows_by_rule_path():
    tree = builder.tree_from_rule(
        {"any": [{"field": "email", "op": "is_set"}, {"all": [{"field": "email", "op": "is_set"}]}]}
    )
    tree.children[1].children[0].field = ""
    with pytest.raises(RuleError) as caught:
        builder.check_tree(tree)
    assert caught.value.path == "any[1].all[0]" and caught.value.message == "choose a field"
    assert builder.node_id_for_path(caught.value.path) == "r-1-0"
    for field, key, message in [
        ("attributes", "", "attribute's key"),
        ("event", "", "event type"),
        ("segment", "", "choose a segment"),
        ("nope", "", "not a known field"),
    ]:
        tree.children[1].children[0].field, tree.children[1].children[0].key = field, key
        with pytest.raises(RuleError, match=message):
            builder.check_tree(tree)


def test_node_id_for_path():
    assert builder.node_id_for_path("") == "r"
    assert builder.node_id_for_path("all[2].any[0]") == "r-2-0"


CATALOGUE = {
    "fields": [
        {"name": "email", "label": "Email", "type": "text", "group": "Customer", "choices": []},
        {
            "name": "metrics.r_score",
            "label": "Recency score (1-5)",
            "type": "integer",
            "group": "Metrics",
            "choices": [["1", "1"], ["5", "5"]],
        },
        {"name": "attributes.*", "label": "Attribute", "type": "attribute", "group": "Attributes"},
    ],
    "segments": [{"slug": "vip", "name": "VIP", "kind": "static"}],
}


def test_builder_view_offers_fields_operators_inputs_and_errors():
    options = builder.field_options(CATALOGUE)
    assert options.groups[0] == ("Customer", [("email", "Email")])
    assert [v for v, _ in options.groups[-1][1]] == ["attributes", "event", "segment"]
    tree = builder.tree_from_rule(
        {
            "all": [
                {"field": "email", "op": "in", "value": ["a"]},
                {"field": "metrics.r_score", "op": "between", "value": [1, 5]},
                {"event": "purchase", "op": "never"},
                {"segment": "vip", "op": "in"},
                {"field": "attributes.n", "op": "gt", "value": 2},
            ]
        }
    )
    view = builder.builder_view(tree, options=options, errors={"r-1": "boom"})
    email, score, event, segment, attribute = view.children
    assert email.value_kind == "list" and email.input_type == "text" and not email.choices
    assert ("contains", "contains") in email.operators
    assert score.value_kind == "pair" and score.choices == [("1", "1"), ("5", "5")]
    assert score.error == "boom" and email.error == ""
    assert event.kind == "event" and [v for v, _ in event.operators] == [
        "at_least",
        "fewer_than",
        "never",
    ]
    assert segment.kind == "segment" and segment.choices == [("vip", "VIP")]
    assert attribute.kind == "attribute" and attribute.input_type == "number"
    assert view.is_root and view.can_add and view.can_add_group


def test_describe_rule_reads_aloud():
    sentence = builder.describe_rule(RULES[-1], segment_names={})
    assert sentence.text == "All of these:"
    assert sentence.children[0].text == "Recency score (1-5) is at least 4"
    inner = sentence.children[1]
    assert inner.text == "Any of these:"
    assert inner.children[0].text == "did “purchase” at least 1 time in the last 7 days"
    assert inner.children[1].children[0].text == "First name starts with “Al”"
    said = builder.describe_rule(
        {
            "any": [
                {"segment": "champions", "op": "not_in"},
                {"event": "login", "op": "never"},
                {"field": "created_at", "op": "within_last_days", "value": 30},
                {"field": "subscription_status", "op": "in", "value": ["a", "b", "c"]},
                {"field": "metrics.monetary", "op": "between", "value": [1, 2]},
                {"field": "attributes.vip", "op": "is_set"},
            ]
        },
        segment_names={"champions": "Champions"},
    )
    assert [c.text for c in said.children] == [
        "is not in segment “Champions”",
        "never did “login”",
        "Created is in the last 30 days",
        "Subscription status is one of “a”, “b” or “c”",
        "Total spent is between 1 and 2",
        "Attribute “vip” is set",
    ]
    assert builder.describe_rule({"all": []}).text == "Every customer"
    assert builder.describe_rule({"any": []}).text == "Nobody"
    assert builder.describe_rule(None).text == "(no rule)"
