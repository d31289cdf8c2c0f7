"""Credentials out of everything shown: URLs in summaries, messages and log lines."""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ — the userinfo runs to the *last* @ before the host, so a password
# that contains @ is taken whole (greedy, but never across a /, a space or a quote).
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"<>]*@")


def redact_url(url: str) -> str:
    """The URL without credentials and query string (which often carries secrets)."""
    scheme, sep, rest = url.partition("//")
    if sep:
        authority, slash, path = rest.partition("/")
        rest = authority.rpartition("@")[2] + slash + path
    return (scheme + sep + rest).split("?", 1)[0]


def redact_text(text: str) -> str:
    """Any URL's credentials in free text replaced by ***."""
    return _USERINFO.sub(r"\1***@", text)


def scrub(text: str, secrets: dict[str, str]) -> str:
    """Credentials redacted, and every secret value (name -> value) shown by its name."""
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        text = text.replace(value, "${" + name + "}")
    return redact_text(text)


def redact_loose(value: str) -> str:
    """A value meant to be a URL but perhaps malformed (`nats:/u:pw@h`, `u:pw@h:4222`), for
    an error message: whatever precedes its last @ may be credentials, so it goes."""
    head, at, tail = value.rpartition("@")
    if not at:
        return value.split("?", 1)[0]
    scheme = head.split("://", 1)[0] + "://" if "://" in head else ""
    return f"{scheme}***@{tail}".split("?", 1)[0]


class RedactingFilter(logging.Filter):
    """On the log handler: no log line shows a URL's credentials, whoever logged it (a
    broker URL in a reconnect warning, a library's exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as logging does
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
