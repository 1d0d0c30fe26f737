"""Docker's `filters` query parameter, in both of its JSON forms.

`{"name": {"web": true}}` (the map form the docker CLI sends) and `{"name": ["web"]}` (the list
form older clients and the SDK send) both become {"name": {"web"}}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from shoal.errors import InvalidArgument

Filters = dict[str, set[str]]


def parse(text: str | None, allowed: Iterable[str]) -> Filters:
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"invalid filters: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidArgument("invalid filters: expected a JSON object")
    out: Filters = {}
    allowed = set(allowed)
    for key, values in raw.items():
        if key not in allowed:
            raise InvalidArgument(f"invalid filter {key!r}")
        if isinstance(values, dict):
            out[key] = {str(v) for v, on in values.items() if on}
        elif isinstance(values, list):
            out[key] = {str(v) for v in values}
        else:
            raise InvalidArgument(f"invalid filter {key!r}: expected a list or a map")
    return out


def labels_match(wanted: set[str], labels: dict[str, str]) -> bool:
    """`key` matches a label by key, `key=value` by key and value; all must match."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def match(filters: Filters, key: str, test: Callable[[str], bool]) -> bool:
    """True when the filter is absent or any of its values passes test."""
    values = filters.get(key)
    return not values or any(test(v) for v in values)
