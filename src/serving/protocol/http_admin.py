"""The operator's HTTP routes: ``/v2/admin/...`` (what ``serving models|promote|rollback|traffic|
shadow|audit`` call) and Triton's ``/v2/repository/models/<name>/load|unload``; each needs an
admin key when keys are on, and is recorded with who asked."""

from __future__ import annotations

from serving.auth import AccessPolicy
from serving.control.admin import OperatorCommands
from serving.errors import ModelNotFoundError
from serving.protocol import admin_json
from serving.protocol.http_messages import Answer, Headers, Receive, Scope, expect, json_answer, read_body


class AdminRoutes:
    def __init__(self, admin: OperatorCommands | None, access: AccessPolicy, max_request_bytes: int) -> None:
        self.admin = admin
        """None answers every route 501 (a server without repository control)."""
        self.access = access
        self.max_request_bytes = max_request_bytes

    def who(self, headers: Headers, scope: Scope, what: str) -> str:
        """With API keys on, an admin key; who is asking (for the audit log)."""
        client = scope.get("client")
        return self.access.check_admin(headers.authorization, what, f"anonymous@{client[0]}" if client else "anonymous")

    async def repository(self, action: str, model: str, scope: Scope, receive: Receive, headers: Headers) -> Answer:
        """``POST /v2/repository/models/<model>/load|unload``."""
        who = self.who(headers, scope, f"{action}ing a model")
        body = await read_body(receive, headers, self.max_request_bytes)
        return json_answer(await admin_json.repository_action(self.admin, action, model, body, who))

    async def route(self, rest: list[str], method: str, scope: Scope, receive: Receive, headers: Headers) -> Answer:
        """``/v2/admin/<rest>``."""
        if rest == ["models"]:
            expect(method, "GET")
            self.who(headers, scope, "reading the model lifecycle state")
            return json_answer({"models": admin_json.commands(self.admin).overview()})
        if rest == ["audit"]:
            expect(method, "GET")
            self.who(headers, scope, "reading the audit log")
            limit = admin_json.query_int(scope.get("query_string", b""), "limit", 100)
            return json_answer({"entries": await admin_json.commands(self.admin).audit(limit)})
        if len(rest) == 3 and rest[0] == "models" and rest[2] in admin_json.ACTIONS:
            expect(method, "POST")
            who = self.who(headers, scope, f"{rest[2]} on a model")
            body = await read_body(receive, headers, self.max_request_bytes)
            return json_answer(await admin_json.routing_action(self.admin, rest[2], rest[1], body, who))
        raise ModelNotFoundError(f"no route {scope['path'][:200]!r}")
