"""``kv get|put|delete|export|import`` (Consul's ``command/kv``)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import posixpath
from typing import Any
from urllib.parse import quote

from server.clicmd.api import APIError, Client
from server.clicmd.base import Command, Context, Fail, register
from server.clicmd.flags import FlagSet

__all__ = ["go_json", "pretty_kv_pair"]


def _kv_path(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="/")


def _value(pair: dict[str, Any]) -> bytes:
    raw = pair.get("Value")
    return base64.b64decode(raw) if raw else b""


def go_json(data: Any, indent: str | None = "\t") -> str:
    """``json.MarshalIndent`` output: Go's HTML-safe escapes, UTF-8 kept."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def pretty_kv_pair(pair: dict[str, Any], b64: bool) -> str:
    """Consul's ``prettyKVPair`` (a tabwriter with padding 6), without a final newline."""
    value = _value(pair)
    shown = base64.b64encode(value).decode() if b64 else value.decode("utf-8", "replace")
    rows = [
        ("CreateIndex", str(pair.get("CreateIndex", 0))),
        ("Flags", str(pair.get("Flags", 0))),
        ("Key", str(pair.get("Key", ""))),
        ("LockIndex", str(pair.get("LockIndex", 0))),
        ("ModifyIndex", str(pair.get("ModifyIndex", 0))),
        ("Session", pair.get("Session") or "-"),
        ("Value", shown),
    ]
    width = max(len(k) for k, _ in rows) + 6
    return "\n".join(k.ljust(width) + v for k, v in rows)


def _strip_key(key: str) -> str:
    return key[1:] if key.startswith("/") else key


def _one_key(ctx: Context) -> str:
    if len(ctx.args) > 1:
        raise Fail(f"Too many arguments (expected 1, got {len(ctx.args)})")
    return _strip_key(ctx.args[0]) if ctx.args else ""


def _get_pairs(client: Client, key: str, recurse: bool) -> list[dict[str, Any]]:
    resp = client.get(_kv_path(key), {"recurse": recurse}, allow=(404,))
    if resp.status == 404:
        return []
    data = resp.json()
    return list(data or [])


@register
class KVGet(Command):
    name = "kv get"
    synopsis = "Retrieves or lists data from the KV store"
    usage = """
Usage: consul kv get [options] [KEY_OR_PREFIX]

  Retrieves the value from Consul's key-value store at the given key name. If no
  key exists with that name, an error is returned. If a key exists with that
  name but has no data, nothing is returned. If the name or prefix is omitted,
  it defaults to "" which is the root of the key-value store.

      $ consul kv get foo
      $ consul kv get -recurse foo
      $ consul kv get -keys -separator="" foo
"""

    def setup(self, fs: FlagSet) -> None:
        fs.boolean("base64", help="Base64 encode the value. The default value is false.")
        fs.boolean(
            "detailed",
            help="Provide additional metadata about the key in addition to the value such as "
            "the ModifyIndex and any flags that may have been set on the key. The default "
            "value is false.",
        )
        fs.boolean(
            "keys",
            help="List keys which start with the given prefix, but not their values. This is "
            "especially useful if you only need the key names themselves. This option is "
            "commonly combined with the -separator option. The default value is false.",
        )
        fs.boolean(
            "recurse",
            help="Recursively look at all keys prefixed with the given path. The default "
            "value is false.",
        )
        fs.string(
            "separator",
            "/",
            'String to use as a separator between keys. The default value is "/", but this '
            "option is only taken into account when paired with the -keys flag.",
        )

    def run(self, ctx: Context) -> int:
        key = _one_key(ctx)
        if not key and not (ctx["recurse"] or ctx["keys"]):
            raise Fail("Error! Missing KEY argument")
        client = ctx.client
        b64 = ctx["base64"]
        try:
            if ctx["keys"]:
                params: dict[str, Any] = {"keys": True}
                if ctx["separator"]:
                    params["separator"] = ctx["separator"]
                resp = client.get(_kv_path(key), params, allow=(404,))
                for k in (resp.json() or []) if resp.status != 404 else []:
                    ctx.out(k)
                return 0
            if ctx["recurse"]:
                pairs = _get_pairs(client, key, True)
                if ctx["detailed"]:
                    ctx.out("\n\n".join(pretty_kv_pair(p, b64) for p in pairs))
                    return 0
                for p in pairs:
                    v = _value(p)
                    shown = base64.b64encode(v).decode() if b64 else v.decode("utf-8", "replace")
                    ctx.out(f"{p['Key']}:{shown}")
                return 0
            pairs = _get_pairs(client, key, False)
        except APIError as exc:
            raise Fail(f"Error querying Consul agent: {exc}") from None
        if not pairs:
            raise Fail(f"Error! No key exists at: {key}")
        pair = pairs[0]
        if ctx["detailed"]:
            ctx.out(pretty_kv_pair(pair, b64))
        elif b64:
            ctx.out(base64.b64encode(_value(pair)).decode())
        else:
            ctx.stdout.flush()
            value = _value(pair)
            buf = getattr(ctx.stdout, "buffer", None)
            if buf is not None:
                buf.write(value + b"\n")
                buf.flush()
            else:
                ctx.out(value.decode("utf-8", "replace"))
        return 0


def read_data_arg(data: str, stdin: Any) -> str | bytes:
    """Consul's ``@file`` / ``-`` (stdin) / literal value convention."""
    if not data:
        return ""
    if data[0] == "@":
        try:
            with open(data[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise Fail(f"Error! Failed to read file: {exc.strerror or exc}") from None
    if data[0] == "-" and len(data) == 1:
        try:
            buf = getattr(stdin, "buffer", None)
            raw: str | bytes = buf.read() if buf is not None else stdin.read()
        except OSError as exc:
            raise Fail(f"Error! Failed to read stdin: {exc}") from None
        return raw
    return data


@register
class KVPut(Command):
    name = "kv put"
    synopsis = "Sets or updates data in the KV store"
    usage = """
Usage: consul kv put [options] KEY [DATA]

  Writes the data to the given path in the key-value store. The data can be of
  any type.

      $ consul kv put config/redis/maxconns 5

  The data can also be consumed from a file on disk by prefixing with the "@"
  symbol. For example:

      $ consul kv put config/program/license @license.lic

  Or it can be read from stdin using the "-" symbol:

      $ echo "abcd1234" | consul kv put config/program/license -

  The DATA argument itself is optional. If omitted, this will create the key
  with no data:

      $ consul kv put webapp/beta/active

  If the -base64 flag is specified, the data will be treated as base 64
  encoded.

  To perform a Check-And-Set operation, specify the -cas flag with the
  appropriate -modify-index flag corresponding to the key you want to perform
  the CAS operation on:

      $ consul kv put -cas -modify-index=844 config/redis/maxconns 5

  Additional flags and more advanced use cases are detailed below.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.boolean(
            "acquire",
            help="Obtain a lock on the key. If the key does not exist, this operation will "
            "create the key and obtain the lock. The session must already exist and be "
            "specified via the -session flag. The default value is false.",
        )
        fs.boolean("base64", help="Treat the data as base 64 encoded. The default value is false.")
        fs.boolean(
            "cas",
            help="Perform a Check-And-Set operation. Specifying this value also requires the "
            "-modify-index flag to be set. The default value is false.",
        )
        fs.integer(
            "flags",
            0,
            "Unsigned integer value to assign to this key-value pair. This value is not read "
            "by Consul, so clients can use this value however makes sense for their use case. "
            "The default value is 0 (no flags).",
            unsigned=True,
        )
        fs.integer(
            "modify-index",
            0,
            "Unsigned integer representing the ModifyIndex of the key. This is used in "
            "combination with the -cas flag.",
            unsigned=True,
        )
        fs.boolean(
            "release",
            help="Forfeit the lock on the key at the given path. This requires the -session "
            "flag to be set. The key must be held by the session in order to be unlocked. "
            "The default value is false.",
        )
        fs.string(
            "session",
            "",
            "User-defined identifer for this session as a string. This is commonly used with "
            "the -acquire and -release operations to build robust locking, but it can be set "
            "on any key. The default value is empty (no session).",
        )

    def run(self, ctx: Context) -> int:
        args = ctx.args
        if not args:
            raise Fail("Error! Missing KEY argument")
        if len(args) > 2:
            raise Fail(f"Error! Too many arguments (expected 1 or 2, got {len(args)})")
        key = args[0]
        data: str | bytes = read_data_arg(args[1], ctx.stdin) if len(args) == 2 else ""
        if (ctx["release"] or ctx["acquire"]) and not ctx["session"]:
            raise Fail("Error! Missing -session (required with -acquire and -release)")
        if ctx["cas"] and not ctx.fs.was_set("modify-index"):
            raise Fail("Must specify -modify-index with -cas!")
        value = data.encode() if isinstance(data, str) else data
        if ctx["base64"]:
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Fail(f"Error! Cannot base 64 decode data: {exc}") from None
        params: dict[str, Any] = {}
        if ctx["flags"]:
            params["flags"] = ctx["flags"]
        path = _kv_path(key)
        client = ctx.client
        # Consul's messages for the conditional writes: (flag, param, its value, error prefix,
        # refusal, success).
        conditional = (
            ("cas", "cas", ctx["modify-index"], f"Error! Did not write to {key}",
             f"Error! Did not write to {key}: CAS failed", f"Success! Data written to: {key}"),
            ("acquire", "acquire", ctx["session"], "Error! Failed writing data",
             "Error! Did not acquire lock", f"Success! Lock acquired on: {key}"),
            ("release", "release", ctx["session"], "Error! Failed writing data",
             "Error! Did not release lock", f"Success! Lock released on: {key}"),
        )  # fmt: skip
        for flag, param, param_value, failed, refused, succeeded in conditional:
            if not ctx[flag]:
                continue
            params[param] = param_value
            try:
                ok = client.put(path, value, params).json()
            except APIError as exc:
                raise Fail(f"{failed}: {exc}") from None
            if not ok:
                raise Fail(refused)
            ctx.out(succeeded)
            return 0
        try:
            client.put(path, value, params)
        except APIError as exc:
            raise Fail(f"Error! Failed writing data: {exc}") from None
        ctx.out(f"Success! Data written to: {key}")
        return 0


@register
class KVDelete(Command):
    name = "kv delete"
    synopsis = "Removes data from the KV store"
    usage = """
Usage: consul kv delete [options] KEY_OR_PREFIX

  Removes the value from Consul's key-value store at the given path. If no
  key exists at the path, no action is taken.

  To delete the value for the key named "foo" in the key-value store:

      $ consul kv delete foo

  To delete all keys which start with "foo", specify the -recurse option:

      $ consul kv delete -recurse foo

  This will delete the keys named "foo", "food", and "foo/bar/zip" if they
  existed.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.boolean(
            "cas",
            help="Perform a Check-And-Set operation. Specifying this value also requires the "
            "-modify-index flag to be set. The default value is false.",
        )
        fs.integer(
            "modify-index",
            0,
            "Unsigned integer representing the ModifyIndex of the key. This is used in "
            "combination with the -cas flag.",
            unsigned=True,
        )
        fs.boolean(
            "recurse",
            help="Recursively delete all keys with the path. The default value is false.",
        )

    def run(self, ctx: Context) -> int:
        key = _one_key(ctx)
        if not key and not ctx["recurse"]:
            raise Fail("Error! Missing KEY argument")
        if ctx["cas"] and not ctx.fs.was_set("modify-index"):
            raise Fail("Must specify -modify-index with -cas!")
        if ctx["recurse"] and ctx["cas"]:
            raise Fail("Cannot specify both -cas and -recurse!")
        if ctx["recurse"] and ctx.fs.was_set("modify-index"):
            raise Fail("Cannot specify both -modify-index and -recurse!")
        client = ctx.client
        path = _kv_path(key)
        if ctx["cas"]:
            try:
                ok = client.delete(path, {"cas": ctx["modify-index"]}).json()
            except APIError as exc:
                raise Fail(f"Error! Did not delete key {key}: {exc}") from None
            if not ok:
                raise Fail(f"Error! Did not delete key {key}: CAS failed")
            ctx.out(f"Success! Deleted key: {key}")
            return 0
        if ctx["recurse"]:
            try:
                client.delete(path, {"recurse": True})
            except APIError as exc:
                raise Fail(f"Error! Did not delete prefix {key}: {exc}") from None
            ctx.out(f"Success! Deleted keys with prefix: {key}")
            return 0
        try:
            client.delete(path)
        except APIError as exc:
            raise Fail(f"Error deleting key {key}: {exc}") from None
        ctx.out(f"Success! Deleted key: {key}")
        return 0


def export_entries(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"key": p.get("Key", ""), "flags": p.get("Flags", 0), "value": p.get("Value") or ""}
        for p in pairs
    ]


@register
class KVExport(Command):
    name = "kv export"
    synopsis = "Exports a tree from the KV store as JSON"
    usage = """
Usage: consul kv export [KEY_OR_PREFIX]

  Retrieves key-value pairs for the given prefix from Consul's key-value store,
  and writes a JSON representation to stdout. This can be used with the command
  "consul kv import" to move entire trees between Consul clusters.

      $ consul kv export vault
"""

    def run(self, ctx: Context) -> int:
        key = _one_key(ctx)
        try:
            pairs = _get_pairs(ctx.client, key, True)
        except APIError as exc:
            raise Fail(f"Error querying Consul agent: {exc}") from None
        ctx.out(go_json(export_entries(pairs)))
        return 0


@register
class KVImport(Command):
    name = "kv import"
    synopsis = "Imports a tree stored as JSON to the KV store"
    usage = """
Usage: consul kv import [DATA]

  Imports key-value pairs to the key-value store from the JSON representation
  generated by the "consul kv export" command.

  The data can be read from a file by prefixing the filename with the "@"
  symbol. For example:

      $ consul kv import @filename.json

  Or it can be read from stdin using the "-" symbol:

      $ cat filename.json | consul kv import -

  Alternatively the data may be provided as the final parameter to the command,
  though care must be taken with regards to shell escaping.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string(
            "prefix",
            "",
            "Key prefix for imported data. The default value is empty meaning root.",
        )

    def run(self, ctx: Context) -> int:
        args = ctx.args
        if not args:
            raise Fail("Error! Missing DATA argument")
        if len(args) > 1:
            raise Fail(f"Error! Too many arguments (expected 1, got {len(args)})")
        data = args[0]
        if not data:
            raise Fail("Error! Empty DATA argument")
        raw = read_data_arg(data, ctx.stdin)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if raw is data and text[:1] not in ("[", "{", " ", "\n", "\t") and os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            entries = json.loads(text)
            if not isinstance(entries, list):
                raise ValueError("json: cannot unmarshal object into []*kvExportEntry")
        except ValueError as exc:
            raise Fail(f"Cannot unmarshal data: {exc}") from None
        client = ctx.client
        for entry in entries:
            if not isinstance(entry, dict):
                raise Fail("Cannot unmarshal data: an entry is not an object")
            try:
                value = base64.b64decode(entry.get("value") or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Fail(f"Error base 64 decoding value: {exc}") from None
            key = str(entry.get("key", ""))
            if ctx["prefix"]:
                key = posixpath.join(ctx["prefix"], key)
            params = {"flags": int(entry.get("flags") or 0)} if entry.get("flags") else {}
            try:
                client.put(_kv_path(key), value, params)
            except APIError as exc:
                raise Fail(f"Error! Failed writing data for key {key}: {exc}") from None
            ctx.out(f"Imported: {key}")
        return 0
