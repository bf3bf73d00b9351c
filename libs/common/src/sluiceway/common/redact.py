"""Scrub secrets (URL userinfo, password parameters) from text bound for events and logs."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*)(:[^@/\s]*)?@")
_PASSWORD_KV = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token)\s*=\s*('[^']*'|\"[^\"]*\"|\S+)"
)
MAX_LEN = 2000


def redact(text: str) -> str:
    """Remove credentials from a message; also bounds its length (events stay small)."""
    text = _USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:***@" if m["user"] else m["scheme"], text
    )
    text = _PASSWORD_KV.sub(lambda m: f"{m[1]}=***", text)
    return text if len(text) <= MAX_LEN else text[: MAX_LEN - 1] + "…"
