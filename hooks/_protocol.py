"""The hook channel protocol, shared by the in-agent hook and the supervisor.

Standard library only, and cheap to import: the agent imports it at start.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON, at most MAX_FRAME bytes.  The agent sends requests:

    {"v":1,"id":N,"op":"check","action":"network_request","target":"POST https://x/y","detail":{}}
    {"v":1,"id":N,"op":"note","action":"file_read","target":"/etc/hosts","detail":{}}
    {"v":1,"id":N,"op":"tamper","target":"sys.audit was replaced","detail":{}}

A `check` gets exactly one reply with the same id:

    {"v":1,"id":N,"verdict":"allow"|"deny","rule":"...","message":"...","response":"block"}

`note` (telemetry: the syscall layer decides those actions) and `tamper` (the
hook saw the agent interfere with it) get no reply.

An allow the supervisor marks cacheable carries `"cache": G`, the server's
cache generation: the hook may answer the same (action, target) itself
until the server invalidates, which it does by pushing a frame between
replies:

    {"v":1,"flush":G2}

The hook then drops every cached answer (policy reload: nothing cached under
an older policy survives).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, Final

VERSION: Final = 1
MAX_FRAME: Final = 64 * 1024
HEADER: Final = struct.Struct(">I")

ENV_SOCKET: Final = "AGENTSUP_HOOK_SOCKET"
ENV_AGENT_ID: Final = "AGENTSUP_AGENT_ID"
# The supervisor's hooks/site, first on the agent's PYTHONPATH: where it is on
# sys.path (and is a hooks/site: a sitecustomize.py beside a _hook.py), its
# sitecustomize installs the supervisor's own hook, and the .pth of an agentsup
# the interpreter has (another copy, maybe unreadable) stands back.
ENV_SITE: Final = "AGENTSUP_HOOK_SITE"
# The directory put first on PYTHONPATH so that any Python the agent starts gets the hook.
SITE_DIR: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
# "1" when the supervisor wants notes (file, shell, connect telemetry); it
# asks only at audit level `all`, so the hot path pays nothing otherwise.
ENV_NOTES: Final = "AGENTSUP_HOOK_NOTES"

OP_CHECK: Final = "check"
OP_NOTE: Final = "note"
OP_TAMPER: Final = "tamper"

# Actions the hook gates (it waits for the verdict) and actions it only
# reports.  The values are ActionType values; the hook cannot import the
# supervisor's enum without slowing every agent's start.
CHECK_ACTIONS: Final = frozenset(
    {
        "network_request",
        "env_read",
        "env_write",
        "database_read",
        "database_write",
        "database_delete",
        "database_execute",
    }
)
NOTE_ACTIONS: Final = frozenset({"file_read", "file_write", "shell_execute", "network_connect"})

VERDICTS: Final = frozenset({"allow", "deny"})
RESPONSES: Final = frozenset({"allow", "log", "warn", "block", "kill", "stop", "hold"})

REQUEST_KEYS: Final = frozenset({"v", "id", "op", "action", "target", "detail"})
REPLY_KEYS: Final = frozenset({"v", "id", "verdict", "rule", "message", "response"})
CACHE_KEY: Final = "cache"
FLUSH_KEY: Final = "flush"

# Ids are JSON numbers; keep them exact in every JSON implementation.
MAX_ID: Final = 2**53 - 1


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""


def frame(payload: bytes) -> bytes:
    """Prefix `payload` with its length; refuse payloads over MAX_FRAME."""
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def split_frames(buffer: bytearray) -> list[bytes]:
    """Remove every complete frame from the front of `buffer` and return them.

    An incomplete frame stays in `buffer`.  An oversize length raises
    ProtocolError at once, before its bytes arrive.
    """
    frames: list[bytes] = []
    offset = 0
    while len(buffer) - offset >= HEADER.size:
        (length,) = HEADER.unpack_from(buffer, offset)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
        end = offset + HEADER.size + length
        if len(buffer) < end:
            break
        frames.append(bytes(buffer[offset + HEADER.size : end]))
        offset = end
    del buffer[:offset]
    return frames


def is_valid_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def is_flush(message: Any) -> bool:
    """True for the server's pushed `{"v":1,"flush":G}` frame."""
    return (
        type(message) is dict
        and set(message) == {"v", FLUSH_KEY}
        and message["v"] == VERSION
        and is_valid_id(message[FLUSH_KEY])
    )


def validate_reply(message: Any, expected_id: int) -> tuple[bool, str, str, str, int | None]:
    """Check a decoded reply; return (allowed, rule, message, response, cache generation)."""
    if type(message) is not dict:
        raise ProtocolError("reply has the wrong fields")
    keys = set(message)
    cache = message.get(CACHE_KEY)
    if keys != REPLY_KEYS and not (keys == REPLY_KEYS | {CACHE_KEY} and is_valid_id(cache)):
        raise ProtocolError("reply has the wrong fields")
    if type(message["v"]) is not int or message["v"] != VERSION:
        raise ProtocolError("reply has the wrong version")
    if not is_valid_id(message["id"]) or message["id"] != expected_id:
        raise ProtocolError("reply answers another request")
    verdict, rule, text, response = (
        message["verdict"],
        message["rule"],
        message["message"],
        message["response"],
    )
    if not all(type(field) is str for field in (verdict, rule, text, response)):
        raise ProtocolError("reply fields must be strings")
    if verdict not in VERDICTS or response not in RESPONSES:
        raise ProtocolError("reply has an unknown verdict or response")
    if cache is not None and (verdict != "allow" or response != "allow"):
        raise ProtocolError("only a plain allow can be cached")
    return verdict == "allow", rule, text, response, cache


def _is_text(value: str) -> bool:
    """Whether `value` can be written as UTF-8: no lone surrogate (`"\\udfff"` in the JSON)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_scalar(value: object) -> bool:
    # NaN and infinities are no JSON: the audit log would hold `Infinity`.
    return (
        value is None
        or type(value) in (str, int, bool)
        or (
            type(value) is float and math.isfinite(value)  # type: ignore[arg-type]
        )
    )


def _valid_detail_value(value: object) -> bool:
    if _valid_scalar(value):
        return True
    return type(value) is list and all(_valid_scalar(item) for item in value)


def _text_detail_value(value: object) -> bool:
    """A valid detail value whose strings are all UTF-8 text."""
    if type(value) is str:
        return _is_text(value)
    return type(value) is not list or all(type(item) is not str or _is_text(item) for item in value)


def validate_request(message: Any) -> tuple[str, str, str, dict[str, Any], int]:
    """Check a decoded request strictly; return (op, action, target, detail, id).

    `action` is "" for a tamper report.  Anything unexpected raises
    ProtocolError: unknown keys, wrong types, an action the op does not
    carry, nested detail values, and text no UTF-8 writer takes (a lone
    surrogate, which json.loads makes of a `\\ud800` escape): the target,
    every detail key and every string in the detail must be UTF-8.
    """
    if type(message) is not dict:
        raise ProtocolError("request is not a JSON object")
    op = message.get("op")
    if op == OP_TAMPER:
        expected = REQUEST_KEYS - {"action"}
    elif op in (OP_CHECK, OP_NOTE):
        expected = REQUEST_KEYS
    else:
        raise ProtocolError(f"unknown op {op!r:.40}")
    if set(message) != expected:
        raise ProtocolError(f"{op} request has the wrong fields")
    if type(message["v"]) is not int or message["v"] != VERSION:
        raise ProtocolError("unsupported protocol version")
    if not is_valid_id(message["id"]):
        raise ProtocolError("request id is not a non-negative integer")
    action = message.get("action", "")
    if op != OP_TAMPER:
        allowed = CHECK_ACTIONS if op == OP_CHECK else NOTE_ACTIONS
        if type(action) is not str or action not in allowed:
            raise ProtocolError(f"action {action!r:.40} is not valid for {op}")
    target, detail = message["target"], message["detail"]
    if type(target) is not str:
        raise ProtocolError("target is not a string")
    if not _is_text(target):
        raise ProtocolError("target is not UTF-8 text (a lone surrogate)")
    if type(detail) is not dict or not all(
        type(key) is str and _valid_detail_value(value) for key, value in detail.items()
    ):
        raise ProtocolError("detail is not a flat object")
    if not all(_is_text(key) and _text_detail_value(value) for key, value in detail.items()):
        raise ProtocolError("detail holds text that is not UTF-8 (a lone surrogate)")
    return op, action, target, detail, message["id"]
