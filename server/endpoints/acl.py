"""``/v1/acl/*`` while ACLs are disabled: every ACL endpoint answers ``401 ACL support
disabled``, as Consul's ``checkACLDisabled`` does (``agent/acl_endpoint.go``). Paths Consul does
not serve stay 404.
"""

from __future__ import annotations

from aiohttp import web

from server.endpoints.context import ServerContext

__all__ = ["ACL_DISABLED", "ACL_PATHS", "register"]

ACL_DISABLED = "ACL support disabled"

#: Consul's ACL routes (exact paths and ``/…/{rest}`` prefixes).
ACL_PATHS = (
    "/v1/acl/bootstrap",
    "/v1/acl/replication",
    "/v1/acl/authorize",
    "/v1/acl/login",
    "/v1/acl/logout",
    "/v1/acl/policies",
    "/v1/acl/policy",
    "/v1/acl/roles",
    "/v1/acl/role",
    "/v1/acl/tokens",
    "/v1/acl/token",
    "/v1/acl/binding-rules",
    "/v1/acl/binding-rule",
    "/v1/acl/auth-methods",
    "/v1/acl/auth-method",
    "/v1/acl/templated-policies",
    "/v1/acl/templated-policy",
    "/v1/acl/rules/translate",
)


def register(app: web.Application, ctx: ServerContext) -> None:
    async def disabled(request: web.Request) -> web.Response:
        return web.Response(status=401, text=ACL_DISABLED)

    for path in ACL_PATHS:
        app.router.add_route("*", path, disabled)
        app.router.add_route("*", path + "/{rest:.*}", disabled)
