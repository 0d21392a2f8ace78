"""The segment builder page: its form inputs <-> a rule tree <-> rule JSON. Pure: no queries.

The page draws the rule as nested groups of condition rows. Every node has an id that is its
path from the root group, ``r`` (``r-2-0`` is the first child of the root's third child), and
posts its inputs as ``<id>.<part>``::

    r.kind=group      r.match=all
    r-0.kind=condition  r-0.field=metrics.frequency  r-0.op=gte  r-0.value=3
    r-1.kind=condition  r-1.field=attributes  r-1.key=plan  r-1.op=eq  r-1.value=pro
    r-2.kind=condition  r-2.field=event  r-2.key=purchase  r-2.op=at_least  r-2.count=2 ...
    r-3.kind=group    r-3.match=any   r-3-0.kind=condition ...

``tree_from_data`` reads that back (ids renumbered, so removals leave no gaps),
``apply_action`` adds or removes rows, ``rule_from_tree`` writes the rule JSON the services
take (``segmentation.rules``), ``tree_from_rule`` goes the other way, and ``builder_view``
prepares what the template draws (dropdown options per row, value inputs, errors).

Values are typed by the field: numbers for numeric fields, text for text fields; attributes
take ``true``/``false`` as booleans and numbers as numbers unless written in double quotes
(``"42"`` is the text 42). Lists are comma-separated. A RuleError's path (``all[2].any[0]``)
maps back to the row that caused it (``node_id_for_path``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Protocol

from segmentation.rules import (
    ATTRIBUTE_PREFIX,
    EVENT_OPERATORS,
    MAX_CONDITIONS,
    MAX_DEPTH,
    OPERATORS,
    RULE_FIELDS,
    SEGMENT_OPERATORS,
    FieldType,
    RuleError,
    ValueKind,
)

ROOT = "r"
ATTRIBUTE = "attributes"
EVENT = "event"
SEGMENT = "segment"
SPECIAL_FIELDS = (ATTRIBUTE, EVENT, SEGMENT)
_ID = re.compile(rf"r(?:-\d{{1,3}}){{0,{MAX_DEPTH + 1}}}")
_PATH_INDEX = re.compile(r"\[(\d+)\]")
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_INTEGER = re.compile(r"-?\d+")


class QueryData(Protocol):
    """What the builder reads from a request: ``QueryDict`` (or ``MultiValueDict``)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def getlist(self, key: str) -> list[str]: ...

    def __iter__(self) -> Any: ...


@dataclass
class Condition:
    id: str = ""
    field: str = ""  # a rule field name, "attributes", "event", "segment"; "" when not chosen
    key: str = ""  # the attribute key, the event type or the segment slug
    op: str = ""
    value: str = ""
    value2: str = ""  # the upper bound of "between"
    values: list[str] = dataclass_field(default_factory=list)  # picked in a multiple select
    count: str = ""  # event conditions: how many times
    days: str = ""  # event conditions: in the last ... days (empty: ever)


@dataclass
class Group:
    id: str = ROOT
    match: str = "all"
    children: list[Group | Condition] = dataclass_field(default_factory=list)


Node = Group | Condition


def new_tree() -> Group:
    """What a new segment starts with: an empty "all of" group (everyone, until a condition
    is added; docs/marketers/segments.md says so)."""
    return renumber(Group())


# --- ids --------------------------------------------------------------------------------------


def renumber(tree: Group) -> Group:
    """Give every node the id of its position (in place); returns the tree."""

    def assign(node: Node, node_id: str) -> None:
        node.id = node_id
        if isinstance(node, Group):
            for index, child in enumerate(node.children):
                assign(child, f"{node_id}-{index}")

    assign(tree, ROOT)
    return tree


def node_id_for_path(path: str) -> str:
    """The row id for a ``RuleError.path`` (``all[2].any[0]`` -> ``r-2-0``; "" -> ``r``)."""
    return "-".join([ROOT, *_PATH_INDEX.findall(path or "")])


def find(tree: Group, node_id: str) -> Node | None:
    if tree.id == node_id:
        return tree
    for child in tree.children:
        if isinstance(child, Group):
            found = find(child, node_id)
            if found is not None:
                return found
        elif child.id == node_id:
            return child
    return None


def _depth(node_id: str) -> int:
    return node_id.count("-") + 1


def _count(tree: Group) -> int:
    return sum(1 + (_count(c) if isinstance(c, Group) else 0) for c in tree.children)


# --- form data -> tree ------------------------------------------------------------------------


def tree_from_data(data: QueryData) -> Group:
    """Read the builder's inputs; unknown or malformed ids are ignored, order is kept."""
    ids: dict[str, str] = {}
    for name in data:
        node_id, dot, part = name.partition(".")
        if dot and part == "kind" and _ID.fullmatch(node_id):
            ids[node_id] = data.get(name)
    nodes: dict[str, Node] = {}
    for node_id, kind in ids.items():
        if kind == "group" or node_id == ROOT:
            match = data.get(f"{node_id}.match")
            nodes[node_id] = Group(node_id, match if match in ("all", "any") else "all")
        elif kind == "condition":
            nodes[node_id] = Condition(
                id=node_id,
                field=_text(data, node_id, "field"),
                key=_text(data, node_id, "key"),
                op=_text(data, node_id, "op"),
                value=_text(data, node_id, "value"),
                value2=_text(data, node_id, "value2"),
                values=[v for v in data.getlist(f"{node_id}.values") if v != ""][:1000],
                count=_text(data, node_id, "count"),
                days=_text(data, node_id, "days"),
            )
    root = nodes.get(ROOT)
    if not isinstance(root, Group):
        root = Group()
    nodes[ROOT] = root

    def key(node_id: str) -> tuple[int, ...]:
        return tuple(int(part) for part in node_id.split("-")[1:])

    for node_id in sorted(nodes, key=key):
        if node_id == ROOT:
            continue
        parent = nodes.get(node_id.rsplit("-", 1)[0])
        if isinstance(parent, Group) and _count(root) < MAX_CONDITIONS:
            parent.children.append(nodes[node_id])
    return renumber(root)


def _text(data: QueryData, node_id: str, part: str) -> str:
    value = data.get(f"{node_id}.{part}")
    return value.strip()[:1000] if isinstance(value, str) else ""


# --- edits ------------------------------------------------------------------------------------


def apply_action(tree: Group, action: str) -> Group:
    """Apply a builder button: ``add-condition:<group>``, ``add-group:<group>``,
    ``remove:<node>``, ``match:<group>:all|any``. Unknown actions change nothing."""
    verb, _, rest = action.partition(":")
    target_id, _, argument = rest.partition(":")
    target = find(tree, target_id)
    if verb == "add-condition" and isinstance(target, Group):
        if _count(tree) < MAX_CONDITIONS:
            target.children.append(Condition())
    elif verb == "add-group" and isinstance(target, Group):
        if _count(tree) + 2 <= MAX_CONDITIONS and _depth(target.id) < MAX_DEPTH:
            other = "any" if target.match == "all" else "all"
            target.children.append(Group(match=other, children=[Condition()]))
    elif verb == "remove" and target is not None and target_id != ROOT:
        parent = find(tree, target_id.rsplit("-", 1)[0])
        if isinstance(parent, Group):
            parent.children = [c for c in parent.children if c is not target]
    elif verb == "match" and isinstance(target, Group) and argument in ("all", "any"):
        target.match = argument
    return renumber(tree)


def normalise(tree: Group) -> Group:
    """Make every row's operator valid for its field (after the field changed, say): the
    operator is kept when the new field has it, otherwise the field's first one."""
    for node in walk(tree):
        if not isinstance(node, Condition):
            continue
        if node.field == EVENT:
            if node.op not in EVENT_OPERATORS:
                node.op = "at_least"
            if node.op != "never" and not node.count:
                node.count = "1"
        elif node.field == SEGMENT:
            if node.op not in SEGMENT_OPERATORS:
                node.op = "in"
        else:
            ops = _field_ops(node.field)
            if ops and node.op not in ops:
                node.op = ops[0]
    return tree


def walk(node: Node):
    """Every node of the tree, depth first, the root first."""
    yield node
    if isinstance(node, Group):
        for child in node.children:
            yield from walk(child)


def _field_ops(name: str) -> tuple[str, ...]:
    if name == ATTRIBUTE:
        from segmentation.rules import ATTRIBUTE_FIELD

        return ATTRIBUTE_FIELD.ops
    spec = RULE_FIELDS.get(name)
    return spec.ops if spec else ()


def _field_type(name: str) -> FieldType | None:
    if name == ATTRIBUTE:
        return FieldType.ATTRIBUTE
    spec = RULE_FIELDS.get(name)
    return spec.type if spec else None


# --- tree -> rule -----------------------------------------------------------------------------


def rule_from_tree(tree: Group) -> dict:
    """The rule JSON for the tree. Never raises: what cannot be typed stays text, so that the
    rule's own validation names the row (``check_tree`` first reports rows left unfinished)."""
    return _group_rule(tree)


def _group_rule(group: Group) -> dict:
    return {group.match: [_node_rule(child) for child in group.children]}


def _node_rule(node: Node) -> dict:
    if isinstance(node, Group):
        return _group_rule(node)
    if node.field == EVENT:
        rule: dict[str, Any] = {"event": node.key, "op": node.op}
        if node.op != "never":
            rule["count"] = _whole(node.count)
        if node.days:
            rule["days"] = _whole(node.days)
        return rule
    if node.field == SEGMENT:
        return {"segment": node.key, "op": node.op}
    name = f"{ATTRIBUTE_PREFIX}{node.key}" if node.field == ATTRIBUTE else node.field
    rule = {"field": name, "op": node.op}
    operator = OPERATORS.get(node.op)
    if operator is None or operator.value is ValueKind.NONE:
        return rule
    kind = _field_type(node.field)
    if operator.value is ValueKind.DAYS:
        rule["value"] = _whole(node.value) if node.value else None
    elif operator.value is ValueKind.LIST:
        raw = node.values or [v.strip() for v in _split_list(node.value)]
        rule["value"] = [_typed(kind, node.op, v) for v in raw if v != ""]
    elif operator.value is ValueKind.PAIR:
        rule["value"] = [_typed(kind, node.op, node.value), _typed(kind, node.op, node.value2)]
    else:
        rule["value"] = _typed(kind, node.op, node.value) if node.value != "" else None
    return rule


def _split_list(text: str) -> list[str]:
    """Comma-separated values; a value in double quotes may hold commas."""
    parts: list[str] = []
    current = ""
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
            current += char
        elif char == "," and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _whole(text: str) -> int | str:
    return int(text) if _INTEGER.fullmatch(text.strip()) else text


def _number(text: str) -> int | float | str:
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


def _typed(kind: FieldType | None, op: str, text: str) -> Any:
    if kind in (FieldType.INTEGER, FieldType.DECIMAL):
        return _number(text) if text != "" else None
    if kind is FieldType.ATTRIBUTE:
        if op in ("gt", "gte", "lt", "lte", "between"):
            return _number(text) if text != "" else None
        if len(text) >= 2 and text[0] == text[-1] == '"':
            return text[1:-1]
        if op in ("contains", "starts_with"):
            return text
        if text in ("true", "false"):
            return text == "true"
        number = _number(text)
        return number
    return text


def check_tree(tree: Group) -> None:
    """Rows the builder knows are unfinished, in friendlier words than the rule validator's:
    raises ``RuleError`` with the row's rule path (``all[2].any[0]``)."""
    for node, path in _walk_paths(tree, ""):
        if not isinstance(node, Condition):
            continue
        if not node.field:
            raise RuleError(path, "choose a field")
        if node.field == ATTRIBUTE and not node.key:
            raise RuleError(path, "write the attribute's key")
        if node.field == EVENT and not node.key:
            raise RuleError(path, "write the event type")
        if node.field == SEGMENT and not node.key:
            raise RuleError(path, "choose a segment")
        if node.field not in SPECIAL_FIELDS and node.field not in RULE_FIELDS:
            raise RuleError(path, f"{node.field} is not a known field")


def _walk_paths(node: Node, path: str):
    yield node, path
    if isinstance(node, Group):
        prefix = f"{path}.{node.match}" if path else node.match
        for index, child in enumerate(node.children):
            yield from _walk_paths(child, f"{prefix}[{index}]")


# --- rule -> tree -----------------------------------------------------------------------------


def tree_from_rule(rule: Any) -> Group:
    """The builder tree for a (structurally valid) rule; anything unexpected is skipped."""
    if not isinstance(rule, dict):
        return new_tree()
    return renumber(_group_from_rule(rule))


def _group_from_rule(rule: dict) -> Group:
    match = "any" if "any" in rule else "all"
    items = rule.get(match)
    group = Group(match=match)
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if "all" in item or "any" in item:
            group.children.append(_group_from_rule(item))
        else:
            group.children.append(_condition_from_rule(item))
    return group


def _condition_from_rule(item: dict) -> Condition:
    if "event" in item:
        return Condition(
            field=EVENT,
            key=str(item.get("event") or ""),
            op=str(item.get("op") or ""),
            count="" if item.get("count") is None else str(item["count"]),
            days="" if item.get("days") is None else str(item["days"]),
        )
    if "segment" in item:
        return Condition(field=SEGMENT, key=str(item["segment"]), op=str(item.get("op") or ""))
    name = str(item.get("field") or "")
    condition = Condition(field=name, op=str(item.get("op") or ""))
    if name.startswith(ATTRIBUTE_PREFIX):
        condition.field, condition.key = ATTRIBUTE, name[len(ATTRIBUTE_PREFIX) :]
    value = item.get("value")
    is_attribute = condition.field == ATTRIBUTE
    if isinstance(value, list):
        texts = [_format(v, quote=is_attribute) for v in value]
        condition.values = texts
        if OPERATORS.get(condition.op) and OPERATORS[condition.op].value is ValueKind.PAIR:
            condition.value = texts[0] if texts else ""
            condition.value2 = texts[1] if len(texts) > 1 else ""
        else:
            condition.value = ", ".join(texts)
    elif value is not None:
        condition.value = _format(value, quote=is_attribute)
    return condition


def _format(value: Any, *, quote: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if quote and (text in ("true", "false") or _NUMBER.fullmatch(text.strip()) or "," in text):
        return f'"{text}"'
    return text


def rule_json(rule: Any) -> str:
    return json.dumps(rule, indent=2, ensure_ascii=False)


# --- what the template draws ------------------------------------------------------------------


@dataclass
class ConditionView:
    node: Condition
    kind: str  # "field", "attribute", "event", "segment" or "" (nothing chosen yet)
    operators: list[tuple[str, str]]
    value_kind: str  # "none", "one", "list", "pair", "days"
    input_type: str  # "text" or "number"
    step: str
    placeholder: str
    choices: list[tuple[str, str]]  # a select instead of a text input when not empty
    help: str
    error: str
    is_group: bool = False


@dataclass
class GroupView:
    node: Group
    children: list[GroupView | ConditionView]
    can_add_group: bool
    can_add: bool
    error: str
    is_root: bool
    is_group: bool = True


@dataclass(frozen=True)
class FieldOptions:
    """The field dropdown's options, grouped: ``[(group label, [(value, label)])]``."""

    groups: list[tuple[str, list[tuple[str, str]]]]
    choices: Mapping[str, list[tuple[str, str]]]  # field name -> value choices
    segments: list[tuple[str, str]]  # (slug, name)


def field_options(catalogue: Mapping[str, Any]) -> FieldOptions:
    """Dropdown options from ``rule_builder_catalogue()`` (its database choices included)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    choices: dict[str, list[tuple[str, str]]] = {}
    for spec in catalogue["fields"]:
        if spec["type"] == FieldType.ATTRIBUTE:
            continue
        groups.setdefault(spec["group"], []).append((spec["name"], spec["label"]))
        if spec.get("choices"):
            choices[spec["name"]] = [(str(v), str(label)) for v, label in spec["choices"]]
    groups.setdefault("Other", []).extend(
        [(ATTRIBUTE, "Attribute…"), (EVENT, "Did an event…"), (SEGMENT, "In a segment…")]
    )
    segments = [(s["slug"], s["name"]) for s in catalogue.get("segments", [])]
    return FieldOptions(list(groups.items()), choices, segments)


def builder_view(
    tree: Group, *, options: FieldOptions, errors: Mapping[str, str] | None = None
) -> GroupView:
    """The tree as the template draws it; ``errors`` maps row ids to messages."""
    return _group_view(tree, options, errors or {}, total=_count(tree))


def _group_view(group: Group, options: FieldOptions, errors: Mapping[str, str], total: int):
    children: list[GroupView | ConditionView] = []
    for child in group.children:
        if isinstance(child, Group):
            children.append(_group_view(child, options, errors, total))
        else:
            children.append(_condition_view(child, options, errors))
    return GroupView(
        node=group,
        children=children,
        can_add_group=_depth(group.id) < MAX_DEPTH and total + 2 <= MAX_CONDITIONS,
        can_add=total < MAX_CONDITIONS,
        error=errors.get(group.id, ""),
        is_root=group.id == ROOT,
    )


def _condition_view(
    node: Condition, options: FieldOptions, errors: Mapping[str, str]
) -> ConditionView:
    error = errors.get(node.id, "")
    if node.field == EVENT:
        return ConditionView(
            node=node,
            kind="event",
            operators=[(op.name, op.label.replace(" … times", "")) for op in _event_ops()],
            value_kind="none",
            input_type="number",
            step="1",
            placeholder="",
            choices=[],
            help="",
            error=error,
        )
    if node.field == SEGMENT:
        return ConditionView(
            node=node,
            kind="segment",
            operators=[(op.name, op.label) for op in SEGMENT_OPERATORS.values()],
            value_kind="none",
            input_type="text",
            step="",
            placeholder="",
            choices=options.segments,
            help="",
            error=error,
        )
    ops = _field_ops(node.field)
    operator = OPERATORS.get(node.op)
    value_kind = operator.value.value if operator else "none"
    kind = _field_type(node.field)
    numeric = kind in (FieldType.INTEGER, FieldType.DECIMAL) or (
        kind is FieldType.ATTRIBUTE and node.op in ("gt", "gte", "lt", "lte", "between")
    )
    placeholder = ""
    if kind is FieldType.DATETIME:
        placeholder = "YYYY-MM-DD"
    elif value_kind == "list" and node.field not in options.choices:
        placeholder = "a, b, c"
    help_text = operator.help if operator else ""
    if kind is FieldType.ATTRIBUTE and not numeric and value_kind in ("one", "list"):
        help_text = (help_text + ' Write "42" in quotes to match the text 42.').strip()
    return ConditionView(
        node=node,
        kind="attribute" if node.field == ATTRIBUTE else ("field" if node.field else ""),
        operators=[(name, OPERATORS[name].label) for name in ops],
        value_kind="days" if value_kind == "days" else value_kind,
        input_type="number" if numeric or value_kind == "days" else "text",
        step="1" if kind is FieldType.INTEGER or value_kind == "days" else "any",
        placeholder=placeholder,
        choices=options.choices.get(node.field, []),
        help=help_text,
        error=error,
    )


def _event_ops():
    return list(EVENT_OPERATORS.values())


# --- reading a rule aloud ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """One line of a readable rule: a group heading (with children) or a condition."""

    text: str
    children: tuple[Sentence, ...] = ()
    is_group: bool = False


def describe_rule(rule: Any, *, segment_names: Mapping[str, str] | None = None) -> Sentence:
    """The rule in words, for the segment page (tolerant of whatever it is given)."""
    names = segment_names or {}
    if not isinstance(rule, dict):
        return Sentence("(no rule)")
    return _describe_group(rule, names)


def _describe_group(rule: dict, names: Mapping[str, str]) -> Sentence:
    match = "any" if "any" in rule else "all"
    items = [i for i in (rule.get(match) or []) if isinstance(i, dict)]
    if not items:
        return Sentence("Every customer" if match == "all" else "Nobody", is_group=True)
    heading = "All of these:" if match == "all" else "Any of these:"
    children = tuple(
        _describe_group(i, names) if ("all" in i or "any" in i) else Sentence(_say(i, names))
        for i in items
    )
    return Sentence(heading, children, is_group=True)


def _say(item: dict, names: Mapping[str, str]) -> str:
    if "event" in item:
        event, op, count, days = item["event"], item.get("op"), item.get("count"), item.get("days")
        when = f" in the last {days} days" if days else ""
        if op == "never":
            return f"never did “{event}”{when}"
        times = "time" if count == 1 else "times"
        if op == "fewer_than":
            return f"did “{event}” fewer than {count} {times}{when}"
        return f"did “{event}” at least {count} {times}{when}"
    if "segment" in item:
        slug = item["segment"]
        name = names.get(slug, slug)
        return f"is {'not ' if item.get('op') == 'not_in' else ''}in segment “{name}”"
    name = str(item.get("field", ""))
    if name.startswith(ATTRIBUTE_PREFIX):
        label = f"Attribute “{name[len(ATTRIBUTE_PREFIX) :]}”"
    else:
        spec = RULE_FIELDS.get(name)
        label = spec.label if spec else name
    op = item.get("op", "")
    operator = OPERATORS.get(op)
    words = operator.label if operator else op
    value = item.get("value")
    if operator is None or operator.value is ValueKind.NONE:
        return f"{label} {words}"
    if operator.value is ValueKind.DAYS:
        return f"{label} {words.replace('…', str(value))}"
    if operator.value is ValueKind.PAIR and isinstance(value, list) and len(value) == 2:
        return f"{label} {words} {_show(value[0])} and {_show(value[1])}"
    if isinstance(value, list):
        shown = [_show(v) for v in value]
        joined = ", ".join(shown[:-1]) + f" or {shown[-1]}" if len(shown) > 1 else "".join(shown)
        return f"{label} {words} {joined}"
    return f"{label} {words} {_show(value)}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"“{value}”"
    return str(value)
