"""Node labels and label selectors, as Ray has them: plain functions over plain data.

A node's labels are a dict of str -> str (``{"zone": "a", "ray.io/node-id": "ab12..."}``).
A *selector* says which labels a node must have: its wire form (what travels with a lease
request or an actor's spec, and what :func:`matches` reads) maps a label key to
``[operator, values]``, the operator one of

* ``"in"``: the node has the label, with one of ``values``;
* ``"!in"``: the node lacks the label, or has it with none of ``values``;
* ``"exists"``, ``"!exists"``: the node has (lacks) the label, whatever its value.

:func:`parse_selector` makes it from what users write: Ray's ``label_selector`` strings
(``"a"``, ``"!a"``, ``"in(a,b)"``, ``"!in(a,b)"``) or the ``In``, ``NotIn``, ``Exists``,
``DoesNotExist`` operators of :mod:`aray.util.scheduling_strategies`. :func:`pick` chooses
the node a request goes to under a label strategy, for the node's lease scheduler (tasks)
and for the head's placement (actors) alike.

Examples:
    >>> sel = parse_selector({"zone": "in(a,b)", "gpu": "!h100"})
    >>> sel
    {'zone': ['in', ['a', 'b']], 'gpu': ['!in', ['h100']]}
    >>> matches(sel, {"zone": "a"}), matches(sel, {"zone": "a", "gpu": "h100"})
    (True, False)
    >>> format_selector(sel)
    '{zone: in(a,b), gpu: !h100}'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .scheduler import fits, taken

#: the label every node has: its id (hex), as Ray sets it
NODE_ID_LABEL = "ray.io/node-id"
#: a node's accelerator model (``H100``), set when its GPUs are of a known model
ACCELERATOR_LABEL = "ray.io/accelerator-type"
#: the labels aray sets itself; a node's own labels may set the others (not its id)
DEFAULT_LABEL_KEYS = (NODE_ID_LABEL, ACCELERATOR_LABEL)

OPERATORS = ("in", "!in", "exists", "!exists")

# Kubernetes' syntax, which Ray's labels share: a name of at most 63 characters, letters
# and digits at both ends, "-", "_" and "." between; a key may have a DNS prefix and "/"
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_PREFIX = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_SET = re.compile(r"(!?)in\((.*)\)")


class LabelError(ValueError):
    """A label or a selector that is not of Ray's syntax (a ValueError).

    Example:
        >>> try:
        ...     parse_selector({"zone": "in("})
        ... except ValueError as exc:
        ...     type(exc).__name__
        'LabelError'
    """


def check_key(key: Any, what: str = "label") -> str:
    """``key`` if it is a valid label key (``name`` or ``prefix/name``), else LabelError.

    Examples:
        >>> check_key("ray.io/accelerator-type")
        'ray.io/accelerator-type'
        >>> check_key("-zone")
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: invalid label key '-zone': a name of at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit, after an optional DNS prefix and '/' (as Kubernetes labels)
    """
    if not isinstance(key, str):
        raise LabelError(f"{what} keys must be strings, got {key!r}")
    prefix, slash, name = key.rpartition("/")
    if not _NAME.fullmatch(name) or (slash and (
            len(prefix) > 253 or not _PREFIX.fullmatch(prefix))):
        raise LabelError(f"invalid {what} key {key!r}: a name of at most 63 letters, digits, "
                         "'-', '_' or '.', beginning and ending with a letter or digit, after "
                         "an optional DNS prefix and '/' (as Kubernetes labels)")
    return key


def check_value(value: Any, key: str, what: str = "label") -> str:
    """``value`` if it is a valid label value ("" or a name as in :func:`check_key`).

    Examples:
        >>> check_value("h100", "gpu"), check_value("", "tier")
        ('h100', '')
        >>> check_value("a b", "zone")
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: invalid value 'a b' of label 'zone': at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit
    """
    if not isinstance(value, str):
        raise LabelError(f"the value of {what} {key!r} must be a string, got {value!r}")
    if value and not _NAME.fullmatch(value):
        raise LabelError(f"invalid value {value!r} of {what} {key!r}: at most 63 letters, "
                         "digits, '-', '_' or '.', beginning and ending with a letter or digit")
    return value


def check_labels(labels: Any, what: str = "labels") -> dict[str, str]:
    """A node's labels, checked: a dict of valid keys to valid values (a copy).

    Examples:
        >>> check_labels({"zone": "a", "tier": ""})
        {'zone': 'a', 'tier': ''}
        >>> check_labels({"zone": 1})
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: the value of label 'zone' must be a string, got 1
        >>> check_labels({"ray.io/node-id": "x"})
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: ray.io/node-id is set by aray (the node's id): leave it out of labels
    """
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise LabelError(f"{what} must be a dict of str -> str, got {type(labels).__name__}")
    out = {}
    for key, value in labels.items():
        check_key(key)
        if key == NODE_ID_LABEL:
            raise LabelError(f"{NODE_ID_LABEL} is set by aray (the node's id): leave it out "
                             f"of {what}")
        out[key] = check_value(value, key)
    return out


def parse_labels_json(text: str, flag: str = "--labels") -> dict[str, str]:
    """What ``aray start --labels`` takes: a JSON object of str -> str
    (``'{"zone": "a"}'``), or Ray's ``key=value,key=value``.

    Examples:
        >>> parse_labels_json('{"zone": "a", "gpu": "h100"}')
        {'zone': 'a', 'gpu': 'h100'}
        >>> parse_labels_json("zone=a,gpu=h100")
        {'zone': 'a', 'gpu': 'h100'}
        >>> parse_labels_json('{"zone": 1}')
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: --labels: the value of label 'zone' must be a string, got 1
    """
    text = text.strip()
    try:
        if text.startswith("{"):
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LabelError(f"not valid JSON ({exc}); give a JSON object of strings, "
                                 "e.g. '{\"zone\": \"a\"}'") from None
            if not isinstance(labels, dict):
                raise LabelError("give a JSON object of strings, e.g. '{\"zone\": \"a\"}'")
            return check_labels(labels)
        labels = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = pair.partition("=")
            if not eq or "=" in value:
                raise LabelError(f"{pair!r} is not key=value; give a JSON object of strings, "
                                 "e.g. '{\"zone\": \"a\"}', or zone=a,gpu=h100")
            labels[key.strip()] = value.strip()
        return check_labels(labels)
    except LabelError as exc:
        raise LabelError(f"{flag}: {exc}") from None


def parse_labels_file(path: str, flag: str = "--labels-file") -> dict[str, str]:
    """What ``aray start --labels-file`` reads: a JSON object, or YAML's flat mapping of one
    ``key: value`` a line (Ray's format; ``#`` comments, values quoted or not).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        ...     _ = f.write('# zones\\n"zone": "a"\\ngpu: h100\\n'); f.flush()
        ...     parse_labels_file(f.name)
        {'zone': 'a', 'gpu': 'h100'}
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise LabelError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if text.strip().startswith("{"):
        return parse_labels_json(text, f"{flag} {path}")
    labels: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise LabelError(f"{flag} {path}, line {n}: {line!r} is not 'key: value'")
        labels[_unquote(key.strip())] = _unquote(value.strip())
    try:
        return check_labels(labels)
    except LabelError as exc:
        raise LabelError(f"{flag} {path}: {exc}") from None


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def node_labels(node_id: str, resources: dict, custom: dict | None = None) -> dict[str, str]:
    """A node's labels: aray's defaults (its id; its accelerator model when the node has the
    resource ``accelerator_type:MODEL``), then its own ``custom`` labels.

    Example:
        >>> node_labels("ab12", {"GPU": 1.0, "accelerator_type:H100": 1.0}, {"zone": "a"})
        {'ray.io/node-id': 'ab12', 'ray.io/accelerator-type': 'H100', 'zone': 'a'}
    """
    labels = {NODE_ID_LABEL: node_id}
    for key in resources:
        if key.startswith("accelerator_type:"):
            labels[ACCELERATOR_LABEL] = key.partition(":")[2]
            break
    labels.update(custom or {})
    labels[NODE_ID_LABEL] = node_id
    return labels


# --- selectors ---------------------------------------------------------------------------
def parse_value(value: Any, key: str = "") -> list:
    """One selector value in its wire form ``[operator, values]``: a Ray string
    (``"a"``, ``"!a"``, ``"in(a,b)"``, ``"!in(a,b)"``), an operator object (anything with a
    ``_wire()``, as ``In("a")``), or a wire form already.

    Examples:
        >>> parse_value("!in(a, b)"), parse_value("a"), parse_value("!a")
        (['!in', ['a', 'b']], ['in', ['a']], ['!in', ['a']])
        >>> parse_value("in()", "zone")
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: invalid label selector value 'in()' for 'zone': give a value ('a'), its negation ('!a'), 'in(a,b)' or '!in(a,b)'
    """
    if hasattr(value, "_wire"):
        return value._wire()
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] in OPERATORS \
            and isinstance(value[1], (list, tuple)):
        return [value[0], [check_value(v, key, "label selector") for v in value[1]]]
    if not isinstance(value, str):
        raise LabelError(f"the label selector value for {key!r} must be a string ('a', '!a', "
                         f"'in(a,b)', '!in(a,b)') or an operator (In, NotIn, Exists, "
                         f"DoesNotExist), got {value!r}")
    found = _SET.fullmatch(value)
    negated, text = (found.group(1), found.group(2)) if found else ("", "")
    values = [v.strip() for v in text.split(",")] if found else []
    if not found:
        negated, values = ("!", [value[1:]]) if value.startswith("!") else ("", [value])
    if (found and not all(values)) or not all(_NAME.fullmatch(v) or v == "" for v in values):
        raise LabelError(f"invalid label selector value {value!r} for {key!r}: give a value "
                         "('a'), its negation ('!a'), 'in(a,b)' or '!in(a,b)'")
    return [negated + "in", values]


def parse_selector(selector: Any, what: str = "label_selector") -> dict[str, list]:
    """A selector (a dict of label key -> value, see :func:`parse_value`) in its wire form.

    Examples:
        >>> parse_selector({"zone": "a", "region": "in(us, eu)"})
        {'zone': ['in', ['a']], 'region': ['in', ['us', 'eu']]}
        >>> parse_selector(None)
        {}
        >>> parse_selector("zone=a")
        Traceback (most recent call last):
        ...
        aray.node.labels.LabelError: label_selector must be a dict of label key -> value (e.g. {'zone': 'a'}), got str
    """
    if selector is None:
        return {}
    if not isinstance(selector, dict):
        raise LabelError(f"{what} must be a dict of label key -> value (e.g. {{'zone': 'a'}}), "
                         f"got {type(selector).__name__}")
    return {check_key(key, "label selector"): parse_value(value, key)
            for key, value in selector.items()}


def _wire(selector: dict) -> dict:
    """``selector`` in its wire form (a wire form is left as it is)."""
    if all(isinstance(v, list) and len(v) == 2 and v[0] in OPERATORS for v in selector.values()):
        return selector
    return parse_selector(selector)


def matches(selector: dict, labels: dict) -> bool:
    """Whether a node with ``labels`` has what ``selector`` asks for (every key of it). The
    selector may be in its wire form or as users write it.

    Examples:
        >>> matches({"zone": "!in(a,b)"}, {}), matches({"zone": "!in(a,b)"}, {"zone": "a"})
        (True, False)
        >>> matches({"gpu": ["exists", []]}, {"gpu": ""}), matches({}, {"zone": "a"})
        (True, True)
    """
    for key, (op, values) in _wire(selector).items():
        have = labels.get(key)
        if op == "in":
            ok = have is not None and have in values
        elif op == "!in":
            ok = have is None or have not in values
        elif op == "exists":
            ok = have is not None
        else:
            ok = have is None
        if not ok:
            return False
    return True


def format_selector(selector: dict) -> str:
    """A selector as users read it (in messages).

    Example:
        >>> format_selector({"gpu": ["exists", []], "zone": ["in", ["a"]]})
        '{gpu: exists, zone: a}'
    """
    parts = []
    for key, (op, values) in _wire(selector).items():
        if op in ("exists", "!exists"):
            text = op
        elif len(values) == 1:
            text = ("!" if op == "!in" else "") + values[0]
        else:
            text = f"{op}({','.join(values)})"
        parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


def strategy_text(strategy: dict) -> str:
    """A label strategy (its wire form) as users read it.

    Example:
        >>> strategy_text({"kind": "labels", "hard": {"zone": ["in", ["a"]]}, "soft": {},
        ...                "fallback": [{"zone": ["in", ["b"]]}]})
        'label selector {zone: a} (then {zone: b})'
    """
    text = "label selector " + format_selector(strategy.get("hard") or {})
    fallback = strategy.get("fallback") or []
    if fallback:
        text += " (then " + ", then ".join(format_selector(s) for s in fallback) + ")"
    soft = strategy.get("soft") or {}
    if soft:
        text += f", preferring {format_selector(soft)}"
    return text


# --- choosing a node ---------------------------------------------------------------------
#: a node as :func:`pick` sees it: (its name, its labels, its total resources, whether the
#: request fits its free resources now)
Candidate = tuple[str, dict, dict, bool]


def pick(nodes: Sequence[Candidate], shape: dict, strategy: dict) -> str | None:
    """The name of the node a request of ``shape`` goes to under a label ``strategy`` (wire
    form: ``{"kind": "labels", "hard": selector, "soft": selector, "fallback": [selector,
    ...]}``), or None when no node whose labels match could ever hold it.

    The nodes considered are those that match ``hard`` and could hold the request (else
    those that match the first of ``fallback`` that some node does, and so on); among them
    the first, in the order given, that has it free now and matches ``soft``, else that has
    it free now, else that matches ``soft``, else the first of them (it waits there).

    Examples:
        >>> nodes = [("a", {"zone": "a"}, {"CPU": 4}, False),
        ...          ("b", {"zone": "b"}, {"CPU": 4}, True),
        ...          ("c", {"zone": "b", "disk": "ssd"}, {"CPU": 4}, True)]
        >>> hard_b = {"hard": {"zone": ["in", ["b"]]}}
        >>> pick(nodes, {"CPU": 1}, hard_b)
        'b'
        >>> pick(nodes, {"CPU": 1}, dict(hard_b, soft={"disk": ["in", ["ssd"]]}))
        'c'
        >>> pick(nodes, {"CPU": 8}, hard_b) is None
        True
        >>> pick(nodes, {"CPU": 1}, {"hard": {"zone": ["in", ["z"]]},
        ...                          "fallback": [{"zone": ["in", ["a"]]}]})
        'a'
    """
    able: list[Candidate] = []
    for selector in [strategy.get("hard") or {}, *(strategy.get("fallback") or [])]:
        able = [n for n in nodes if fits(shape, n[2]) and matches(selector, n[1])]
        if able:
            break
    if not able:
        return None
    soft = strategy.get("soft") or {}
    # min() keeps the first of equals: the order given breaks ties
    best = min(able, key=lambda n: (not n[3], not (soft and matches(soft, n[1]))))
    return best[0]


def route(strategy: dict, shape: dict, own: Candidate, others: list[list]) -> str | None:
    """Where the lease scheduler sends a request of ``shape`` under a label ``strategy``:
    "" to keep it on this node (``own``, named ""), another node's address, or None when no
    node matches. ``others`` are the view's entries of the other nodes, ``[node_id,
    address, total, free, labels]``; the one chosen counts the request as taken from its
    free resources until the next view (so that a burst spreads).

    Example:
        >>> others = [["b", "addr-b", {"CPU": 2}, {"CPU": 2}, {"zone": "b"}]]
        >>> own = ("", {"zone": "a"}, {"CPU": 2}, True)
        >>> route({"hard": {"zone": ["in", ["b"]]}}, {"CPU": 1}, own, others), others[0][3]
        ('addr-b', {'CPU': 1.0})
        >>> route({"hard": {"zone": ["in", ["a"]]}}, {"CPU": 1}, own, others)
        ''
    """
    by_address = {entry[1]: entry for entry in others}
    target = pick([own, *((e[1], entry_labels(e), e[2], fits(shape, e[3])) for e in others)],
                  shape, strategy)
    if target:
        entry = by_address[target]
        entry[3] = taken(entry[3], shape)
    return target


def entry_labels(entry: Sequence) -> dict:
    """The labels of a view entry (none from a head that sends four fields).

    Example:
        >>> entry_labels(["b", "addr-b", {}, {}, {"zone": "b"}]), entry_labels(["b", "a", {}, {}])
        ({'zone': 'b'}, {})
    """
    return entry[4] if len(entry) > 4 and isinstance(entry[4], dict) else {}


def unmatched_message(what: str, description: str, shape: dict, strategy: dict,
                      nodes: Iterable[tuple[str, dict]], limit: int = 8) -> str:
    """The warning for a request no node can run under its label strategy: what it asks
    for, and the labels each node has (``nodes``: ``(node_id, labels)``).

    Example:
        >>> print(unmatched_message("task", "f", {"CPU": 1.0},
        ...       {"hard": {"zone": ["in", ["c"]]}},
        ...       [("ab12cd34ef56aa", {"ray.io/node-id": "ab12cd34ef56aa", "zone": "a"})]))
        The task f cannot be scheduled right now: no node whose labels match its label selector {zone: c} can hold {CPU: 1.0} (the nodes' labels: ab12cd34ef56: {zone: a}). It stays pending and runs as soon as such a node joins.
    """
    from .scheduler import resources_text

    rows = []
    nodes = list(nodes)
    for node_id, labels in nodes[:limit]:
        own = ", ".join(f"{k}: {v}" for k, v in sorted(labels.items()) if k != NODE_ID_LABEL)
        rows.append(f"{node_id[:12]}: {{{own}}}")
    if len(nodes) > limit:
        rows.append(f"and {len(nodes) - limit} more")
    return (f"The {what} {description} cannot be scheduled right now: no node whose labels "
            f"match its {strategy_text(strategy)} can hold {resources_text(shape)} (the "
            f"nodes' labels: {'; '.join(rows) or 'no node'}). It stays pending and runs as "
            "soon as such a node joins.")
