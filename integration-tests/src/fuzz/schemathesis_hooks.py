"""Schemathesis hooks for the gateway (integration-tests/src/fuzz.test.ts, npm run fuzz).

The OpenAPI document states every rule JSON Schema can state. The few it cannot are listed here,
each narrowly: a `positive_data_acceptance` failure is dropped only when the gateway refused the
request for exactly that rule (matched by its stable error code and message). Every other check,
and every other refusal of schema-valid data, still fails the run.
"""

import json

import schemathesis

# (status, error code, text the message contains): refusals that depend on something a JSON
# Schema cannot express.
INEXPRESSIBLE = [
    # Tool names must be unique within an agent (uniqueness of one property across array items).
    (400, "invalid_request", "duplicate tool name"),
    # No `__proto__` key, and no `constructor` object with a `prototype` key, anywhere in a body
    # (fastify's JSON parser refuses prototype poisoning); stating it would take a `propertyNames`
    # on every object of every schema.
    (400, "invalid_json", "__proto__"),
    # A tool's inputSchema must compile as a JSON Schema (the meta-schema is not restated).
    (400, "invalid_request", "not a usable JSON Schema"),
    # An Idempotency-Key reused with another body: depends on an earlier request, like a 409.
    (422, "idempotency_key_reused", ""),
    # An agent's MCP server could not be listed: depends on that server (reachable, allowed by the
    # egress policy, configured by the operator in MCP_STDIO_SERVERS), not on the request's shape.
    (422, "mcp_list_failed", ""),
    # The chat protocols (issue 11) take the clients' own shapes (AI SDK UI messages, OpenAI chat
    # messages) and then read the *last* message (or, with x-abide-conversation-id, only it): a
    # rule on the last item of an array, or one that depends on a header, which JSON Schema
    # cannot state.
    (400, "invalid_request", "the last user message has no text"),
    (400, "invalid_request", "a user message may only have text parts"),
    (400, "invalid_request", "the last message is an assistant message without approval responses"),
    (400, "invalid_request", "the last message must be a user message with text"),
    (400, "invalid_request", "messages are not accepted (the agent's system prompt and tools are used)"),
    (400, "invalid_request", "the last message must be a user message or an assistant message with approval responses"),
    (400, "invalid_request", "approval responses need the chat id"),
    (400, "invalid_request", "only text parts are supported"),
    # GET /v1/ws without the WebSocket handshake, which an HTTP client does not perform; the
    # frame fuzzer in fuzz.test.ts exercises the socket itself.
    (426, "upgrade_required", ""),
]

# `negative_data_rejection` counts these refusals of invalid data as acceptance; they are not:
# a body over MAX_BODY_BYTES is refused (413) before it is validated.
REFUSALS_NOT_LISTED = [(413, "payload_too_large")]


def _error(response):
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return None, ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    return error.get("code"), str(error.get("message", ""))


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if response is None:
        return True
    code, message = _error(response)
    if type(failure).__name__ == "AcceptedNegativeData":
        return (response.status_code, code) not in REFUSALS_NOT_LISTED
    if type(failure).__name__ != "RejectedPositiveData":
        return True
    for status, expected_code, text in INEXPRESSIBLE:
        if response.status_code == status and code == expected_code and text in message:
            return False
    return True
