"""Being told: a FAILED or PARTIAL backup notifies the operators.

Two channels, both optional: Django's ``mail_admins`` (when Django is configured and ``ADMINS``
is set) and a webhook (``BACKUP_NOTIFY_WEBHOOK_URL``, a JSON POST). The problem is always logged
too. A notification never breaks a backup: every failure to notify is logged and swallowed, and
the webhook waits a bounded time. Nothing secret is sent: the payload holds the backup id,
status, reason, database name and host names, and any configured secret that might appear in a
reason is masked before it leaves.

The Celery task defers notifications while it decides whether to retry (:func:`deferred`), so
the operator reads "retrying in 2 min (attempt 2 of 4)" rather than a bare failure.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from strongroom import __version__
from strongroom.config import Config

log = logging.getLogger("strongroom.notify")
#: The notice itself (a worker's log is where operators read it; the CLI prints its own line).
notice_log = logging.getLogger("strongroom.notify.notice")

WEBHOOK_TIMEOUT = 5.0
WEBHOOK_ATTEMPTS = 3
_SECRET_OPTION = re.compile(r"secret|password|token|key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+):[^@\s/]+@")
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)
REDACTED = "[redacted]"


@dataclass
class Notice:
    """One problem to report: what the webhook body and the mail say."""

    backup_id: str
    status: str
    reason: str
    database: str
    database_host: str
    host: str
    time: str
    note: str = ""

    def payload(self) -> dict[str, Any]:
        return {
            "event": "strongroom.backup.problem",
            "backup_id": self.backup_id,
            "status": self.status,
            "reason": self.reason,
            "note": self.note,
            "database": self.database,
            "database_host": self.database_host,
            "host": self.host,
            "time": self.time,
            "tool": f"strongroom {__version__}",
        }

    def subject(self) -> str:
        which = f"backup {self.backup_id}" if self.backup_id else "backup"
        return f"strongroom: {which} of {self.database or 'database'} {self.status}"

    def body(self) -> str:
        lines = [
            f"Backup:   {self.backup_id or '(no catalog record)'}",
            f"Status:   {self.status}",
            f"Reason:   {self.reason or '(none given)'}",
            f"Database: {self.database} on {self.database_host}",
            f"Host:     {self.host}",
            f"Time:     {self.time}",
        ]
        if self.note:
            lines.append(f"Next:     {self.note}")
        return "\n".join(lines) + "\n"


@dataclass
class Outbox:
    """Notifications held back while a Celery task decides whether it will retry."""

    items: list[tuple[Config, Notice]] = field(default_factory=list)
    #: Added to every held notification when it is sent (e.g. "retrying in 60 s").
    note: str = ""

    def add(
        self, config: Config, backup_id: str, status: str, reason: str, *, note: str = ""
    ) -> None:
        notice = build_notice(config, backup_id, status, reason)
        notice.note = _clean(note, _secrets(config))
        self.items.append((config, notice))

    def flush(self) -> None:
        items, self.items = self.items, []
        for config, notice in items:
            if self.note and not notice.note:
                notice.note = _clean(self.note, _secrets(config))
            deliver(config, notice)


_outbox: ContextVar[Outbox | None] = ContextVar("strongroom_notify_outbox", default=None)


@contextmanager
def deferred() -> Iterator[Outbox]:
    """Hold notifications raised inside the block; send them (with ``note``) when it ends."""
    box = Outbox()
    token = _outbox.set(box)
    try:
        yield box
    finally:
        _outbox.reset(token)
        box.flush()


def notify_problem(config: Config, backup_id: str, status: str, reason: str) -> None:
    """Tell the operators that backup ``backup_id`` ended ``status`` because of ``reason``.

    Never raises: a broken mail server or webhook must not turn a PARTIAL backup into a crash.
    """
    try:
        box = _outbox.get()
        if box is not None:
            box.add(config, backup_id, status, reason)
            return
        deliver(config, build_notice(config, backup_id, status, reason))
    except Exception:
        log.exception("could not notify about backup %s (%s)", backup_id, status)


def build_notice(config: Config, backup_id: str, status: str, reason: str) -> Notice:
    secrets = _secrets(config)
    database, db_host = _database(config)
    return Notice(
        backup_id=backup_id,
        status=status,
        reason=_clean(reason, secrets),
        database=database,
        database_host=db_host,
        host=socket.gethostname(),
        time=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def deliver(config: Config, notice: Notice) -> None:
    """Log, mail and POST one notice; each channel fails on its own, logged, never raised."""
    notice_log.error(
        "backup %s of %s %s: %s%s",
        notice.backup_id or "(no record)",
        notice.database,
        notice.status,
        notice.reason,
        f" ({notice.note})" if notice.note else "",
    )
    try:
        _mail_admins(notice)
    except Exception as exc:
        log.warning("could not mail the admins about backup %s: %s", notice.backup_id, exc)
    if config.webhook_url:
        try:
            post_webhook(config.webhook_url, notice.payload())
        except Exception as exc:
            log.warning(
                "could not notify %s about backup %s: %s",
                _describe_url(config.webhook_url),
                notice.backup_id,
                exc,
            )


def _mail_admins(notice: Notice) -> None:
    """Django's ``mail_admins`` when a project is configured with ``ADMINS``; else nothing."""
    from django.conf import settings

    if not settings.configured or not getattr(settings, "ADMINS", None):
        return
    from django.core.mail import mail_admins

    mail_admins(notice.subject(), notice.body(), fail_silently=False)


def post_webhook(url: str, payload: dict[str, Any]) -> None:
    """POST ``payload`` as JSON; retry connection trouble and 5xx a few times, briefly."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("BACKUP_NOTIFY_WEBHOOK_URL must be an http(s):// URL")
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"strongroom/{__version__}"}
    last: Exception | None = None
    for attempt in range(WEBHOOK_ATTEMPTS):
        if attempt:
            time.sleep(0.5 * 2**attempt)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                response.read(1024)
            return
        except urllib.error.HTTPError as exc:
            last = RuntimeError(f"HTTP {exc.code} {exc.reason}")
            if exc.code < 500:
                break
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last = RuntimeError(f"unreachable: {reason}")
    raise last or RuntimeError("webhook failed")


def _describe_url(url: str) -> str:
    """Scheme and host only: webhook paths often carry a token (Slack, Teams)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def _database(config: Config) -> tuple[str, str]:
    try:
        from strongroom.core.postgres import ConnInfo

        target = ConnInfo.parse(config.database_url)
        host = target.params.get("host", "localhost")
        port = target.params.get("port", "5432")
        return target.dbname, f"{host}:{port}"
    except Exception:
        return "", ""


def _secrets(config: Config) -> list[str]:
    """Every configured secret, longest first, so none can leak through a reason string."""
    found: list[str] = []
    if config.encryption_key:
        found.append(str(config.encryption_key))
    found.extend(str(k) for k in config.old_encryption_keys)
    for spec in config.locations:
        for name, value in spec.options.items():
            if value and _SECRET_OPTION.search(name) and isinstance(value, str):
                found.append(value)
    for url in (config.database_url, config.drill_target_url):
        try:
            from strongroom.core.postgres import ConnInfo

            password = ConnInfo.parse(url or "").params.get("password")
            if password:
                found.append(password)
        except Exception:
            pass
    if config.webhook_url:
        found.append(config.webhook_url)
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def _clean(text: str, secrets: list[str]) -> str:
    text = str(text or "")
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)
