"""State table ``prepared_queries`` (Consul's ``prepared-queries`` table) and the query
template engine (Consul's ``agent/consul/prepared_query``).

Rows are Consul's ``PreparedQuery`` objects in API shape (``ID``, ``Name``, ``Session``,
``Token``, ``Template``, ``Service``, ``DNS``, ``CreateIndex``, ``ModifyIndex``), keyed by ID.
The endpoint builds and validates them; ``set_txn`` adds the checks that need the table, with
Consul's texts:

* ``name '<n>' aliases an existing query name`` (names are unique);
* ``a query template with an empty name already exists``;
* ``name '<n>' aliases an existing query ID`` (a name may not be another query's ID);
* ``invalid session "<id>"`` (the session, if any, must exist);
* ``failed compiling template: ...`` (a bad template regexp or interpolation).

``resolve`` finds a query by ID (templates cannot be used by ID), by exact name, then by the
longest template name prefix, and renders templates: ``${name.full}``, ``${name.prefix}``,
``${name.suffix}``, ``${match(N)}`` (the template's ``Regexp`` submatches) and
``${agent.segment}`` in every string of ``Service`` and ``DNS``; ``RemoveEmptyTags`` drops the
tags that render empty.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "TABLE_PREPARED_QUERIES",
    "PreparedQueryError",
    "PreparedQueryTable",
    "compile_template",
    "is_template",
    "is_uuid",
    "render_template",
]

TABLE_PREPARED_QUERIES = "prepared-queries"
TEMPLATE_NAME_PREFIX_MATCH = "name_prefix_match"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_MATCH = re.compile(r"^match\(\s*(\d+)\s*\)$")


class PreparedQueryError(ValueError):
    """A prepared query the state refuses (Consul's text)."""


def is_uuid(text: str) -> bool:
    return bool(_UUID.match(text))


def is_template(query: dict[str, Any]) -> bool:
    return bool((query.get("Template") or {}).get("Type"))


def _strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_strings(item, fn) for item in value]
    if isinstance(value, dict):
        return {key: _strings(item, fn) for key, item in value.items()}
    return value


def _check_expression(expression: str) -> None:
    expr = expression.strip()
    if expr in ("name.full", "name.prefix", "name.suffix", "agent.segment"):
        return
    if _MATCH.match(expr):
        return
    raise PreparedQueryError(f"unknown variable accessed: {expr}")


def compile_template(query: dict[str, Any]) -> re.Pattern[str] | None:
    """Check a template query; returns its compiled Regexp (None without one)."""
    template = query.get("Template") or {}
    kind = template.get("Type", "")
    if kind != TEMPLATE_NAME_PREFIX_MATCH:
        raise PreparedQueryError(f"Bad Template.Type '{kind}'")
    pattern: re.Pattern[str] | None = None
    if template.get("Regexp"):
        try:
            pattern = re.compile(str(template["Regexp"]))
        except re.error as exc:
            raise PreparedQueryError(f"Bad Regexp: {exc}") from None

    def check(text: str) -> str:
        for found in _INTERPOLATION.finditer(text):
            try:
                _check_expression(found.group(1))
            except PreparedQueryError as exc:
                raise PreparedQueryError(f"Bad format '{text}' in template: {exc}") from None
        return text

    _strings({"Service": query.get("Service"), "DNS": query.get("DNS")}, check)
    return pattern


def render_template(query: dict[str, Any], name: str, segment: str = "") -> dict[str, Any]:
    """The template ``query`` rendered for the looked-up ``name``."""
    pattern = compile_template(query)
    prefix = str(query.get("Name", ""))
    matches: list[str] = []
    if pattern is not None:
        found = pattern.search(name)
        if found is not None:
            matches = [found.group(0), *(g or "" for g in found.groups())]

    def evaluate(expression: str) -> str:
        expr = expression.strip()
        if expr == "name.full":
            return name
        if expr == "name.prefix":
            return prefix
        if expr == "name.suffix":
            return name[len(prefix) :] if name.startswith(prefix) else name
        if expr == "agent.segment":
            return segment
        index = int(_MATCH.match(expr).group(1))  # type: ignore[union-attr]
        return matches[index] if index < len(matches) else ""

    def render(text: str) -> str:
        return _INTERPOLATION.sub(lambda m: evaluate(m.group(1)), text)

    out = copy.deepcopy(query)
    out["Service"] = _strings(out.get("Service"), render)
    out["DNS"] = _strings(out.get("DNS"), render)
    if (out.get("Template") or {}).get("RemoveEmptyTags"):
        tags = out["Service"].get("Tags")
        if tags:
            out["Service"]["Tags"] = [tag for tag in tags if tag]
    return out


class PreparedQueryTable(StateTable):
    name = "prepared_queries"

    def __init__(self, indexes: IndexTable) -> None:
        super().__init__(indexes)
        self._rows: dict[str, dict[str, Any]] = {}
        self._by_name: dict[str, str] = {}

    def _index(self) -> int:
        return max(self._indexes.get(TABLE_PREPARED_QUERIES), 1)

    def _watch(self, ws: WatchSet | None) -> None:
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_PREPARED_QUERIES))

    # --- reads -------------------------------------------------------------------------

    def get(self, ws: WatchSet | None, query_id: str) -> tuple[int, dict[str, Any] | None]:
        self._watch(ws)
        row = self._rows.get(query_id)
        return self._index(), None if row is None else copy.deepcopy(row)

    def list_all(self, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
        """Every query, ordered by ID."""
        self._watch(ws)
        return self._index(), [copy.deepcopy(self._rows[k]) for k in sorted(self._rows)]

    def resolve(
        self, ws: WatchSet | None, id_or_name: str, segment: str = ""
    ) -> tuple[int, dict[str, Any] | None]:
        """By ID, then exact name, then longest template prefix (rendered). Raises
        ``PreparedQueryError`` for an empty name or a template looked up by ID."""
        self._watch(ws)
        index = self._index()
        if not id_or_name:
            raise PreparedQueryError("Missing query ID")
        if is_uuid(id_or_name):
            row = self._rows.get(id_or_name.lower()) or self._rows.get(id_or_name)
            if row is not None:
                if is_template(row):
                    raise PreparedQueryError(
                        "prepared query templates can only be resolved up by name, not by ID"
                    )
                return index, copy.deepcopy(row)
        query_id = self._by_name.get(id_or_name)
        if query_id is not None:
            row = self._rows[query_id]
            if is_template(row):
                return index, render_template(row, id_or_name, segment)
            return index, copy.deepcopy(row)
        best: dict[str, Any] | None = None
        for row in self._rows.values():
            if not is_template(row):
                continue
            prefix = str(row.get("Name", ""))
            if id_or_name.startswith(prefix) and (
                best is None or len(prefix) > len(str(best.get("Name", "")))
            ):
                best = row
        if best is not None:
            return index, render_template(best, id_or_name, segment)
        return index, None

    # --- writes ------------------------------------------------------------------------

    def set_txn(
        self,
        tx: WriteTxn,
        query: dict[str, Any],
        session_exists: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """Insert or update ``query`` (by its ``ID``); see the module docstring's checks."""
        query_id = str(query.get("ID", ""))
        if not query_id:
            raise PreparedQueryError("Missing query ID")
        existing = self._rows.get(query_id)
        name = str(query.get("Name", ""))
        if name:
            other = self._by_name.get(name)
            if other is not None and other != query_id:
                raise PreparedQueryError(f"name '{name}' aliases an existing query name")
        elif is_template(query):
            for row in self._rows.values():
                if row["ID"] != query_id and is_template(row) and not row.get("Name"):
                    raise PreparedQueryError("a query template with an empty name already exists")
        if is_uuid(name) and name in self._rows:
            raise PreparedQueryError(f"name '{name}' aliases an existing query ID")
        session = str(query.get("Session", ""))
        if session and session_exists is not None and not session_exists(session):
            raise PreparedQueryError(f'invalid session "{session}"')
        if is_template(query):
            try:
                compile_template(query)
            except PreparedQueryError as exc:
                raise PreparedQueryError(f"failed compiling template: {exc}") from None
        row = copy.deepcopy(query)
        row["CreateIndex"] = existing["CreateIndex"] if existing is not None else tx.idx
        row["ModifyIndex"] = tx.idx
        self._store(tx, query_id, row)
        return copy.deepcopy(row)

    def delete_txn(self, tx: WriteTxn, query_id: str) -> bool:
        if query_id not in self._rows:
            return False
        self._store(tx, query_id, None)
        return True

    def delete_session_txn(self, tx: WriteTxn, session_id: str) -> int:
        """Delete the queries bound to a session (Consul does this when it is destroyed)."""
        doomed = [k for k, row in self._rows.items() if row.get("Session") == session_id]
        for query_id in doomed:
            self._store(tx, query_id, None)
        return len(doomed)

    def _store(self, tx: WriteTxn, query_id: str, row: dict[str, Any] | None) -> None:
        old = self._rows.get(query_id)
        if old is not None and old.get("Name"):
            self._by_name.pop(str(old["Name"]), None)
        if row is None:
            self._rows.pop(query_id, None)
        else:
            self._rows[query_id] = row
            if row.get("Name"):
                self._by_name[str(row["Name"])] = query_id

        def undo() -> None:
            current = self._rows.get(query_id)
            if current is not None and current.get("Name"):
                self._by_name.pop(str(current["Name"]), None)
            if old is None:
                self._rows.pop(query_id, None)
            else:
                self._rows[query_id] = old
                if old.get("Name"):
                    self._by_name[str(old["Name"])] = query_id

        tx.on_undo(undo)
        self._indexes.bump(tx, TABLE_PREPARED_QUERIES)

    # --- snapshot ----------------------------------------------------------------------

    def dump(self) -> Any:
        return [copy.deepcopy(self._rows[k]) for k in sorted(self._rows)]

    def restore(self, document: Any) -> None:
        self._rows, self._by_name = {}, {}
        for row in document or ():
            self._rows[str(row["ID"])] = dict(row)
            if row.get("Name"):
                self._by_name[str(row["Name"])] = str(row["ID"])

    def channel_maps(self) -> Sequence[ChannelMap]:
        return ()

    def check_invariants(self) -> None:
        names = {str(r["Name"]): k for k, r in self._rows.items() if r.get("Name")}
        assert names == self._by_name
        top = self._indexes.get(TABLE_PREPARED_QUERIES)
        for row in self._rows.values():
            assert row["CreateIndex"] <= row["ModifyIndex"] <= top
