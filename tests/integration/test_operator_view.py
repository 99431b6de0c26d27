"""The operator's view inside Django: the admin dashboard and the metrics endpoint.

Django's test client against the real catalog (SQLite, with the admin's tables migrated) after a
real backup of the demo shop into local disk and SeaweedFS, and a drill record. The project is
the one a reader of the README would build: admin, sessions, messages, ``strongroom`` in
``INSTALLED_APPS``, and ``strongroom.views.metrics`` in its URLs.
"""

from __future__ import annotations

import secrets
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client.parser import text_string_to_metric_families

from strongroom.catalog import bootstrap
from strongroom.core import crypto
from strongroom.sandbox.demo_data import DemoDatabase, create_demo_database
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

URLCONF = "strongroom_operator_view_urls"
TOKEN = secrets.token_urlsafe(24)
PROJECT = {
    "INSTALLED_APPS": [
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "strongroom",
    ],
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    "TEMPLATES": [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
    "ROOT_URLCONF": URLCONF,
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
    "MESSAGE_STORAGE": "django.contrib.messages.storage.cookie.CookieStorage",
    "ALLOWED_HOSTS": ["testserver"],
    "STRONGROOM_METRICS_TOKEN": TOKEN,
}


@pytest.fixture(scope="module")
def shop(pg_cluster: PgCluster, app_password: str) -> Iterator[DemoDatabase]:
    name = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        yield create_demo_database(
            pg_cluster.url(), name, app_password=app_password, tenants=2, customers_per_tenant=5
        )
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedServer, shop: DemoDatabase
) -> Iterator[dict[str, Any]]:
    """The project's settings over a catalog of this module's own, admin tables migrated."""
    from django.core.management import call_command
    from django.test.utils import override_settings
    from django.urls import clear_url_caches, path

    root = tmp_path_factory.mktemp("operator")
    (root / "local").mkdir()
    catalog = f"sqlite:///{root / 'catalog.sqlite3'}"
    bootstrap.ensure_django(catalog)
    backup_settings = {
        "DATABASE_URL": shop.admin_url,
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(root / "local"),
        "STRONGROOM_LOCATIONS": "local,r2",
        **seaweed.settings("r2", "r2-backups"),
        "R2_PREFIX": f"operator-{uuid.uuid4().hex[:8]}",
        "STRONGROOM_CATALOG_URL": catalog,
        "BACKUP_CHECK_TIMEOUT": "5",
    }
    from django.conf import settings

    try:
        settings.SECRET_KEY  # noqa: B018 (a standalone catalog has none)
    except ImproperlyConfigured:
        # Set for good: override_settings would fail restoring an empty SECRET_KEY.
        settings.SECRET_KEY = secrets.token_urlsafe(50)
    with override_settings(**PROJECT, **backup_settings):
        from django.contrib import admin

        from strongroom import views

        urls = types.ModuleType(URLCONF)
        urls.urlpatterns = [  # type: ignore[attr-defined]
            path("admin/", admin.site.urls),
            path("strongroom/metrics", views.metrics),
        ]
        sys.modules[URLCONF] = urls
        clear_url_caches()
        call_command("migrate", verbosity=0)  # the admin's log and the proxy's permissions
        try:
            yield backup_settings
        finally:
            sys.modules.pop(URLCONF, None)
            clear_url_caches()


@pytest.fixture(scope="module")
def history(project: dict[str, Any], shop: DemoDatabase) -> dict[str, Any]:
    """A real backup and a passed drill of it."""
    from strongroom.catalog import store
    from strongroom.config import load_config
    from strongroom.services.backup import run_full_backup

    report = run_full_backup(load_config(project))
    assert report.status == "COMPLETED", report.error
    drill = store.start_drill(
        backup_id=report.id, kind="full", database=shop.name, target="strongroom_drill_ab12"
    )
    store.finish_drill(drill.pk, ok=True, rto_seconds=3.25)
    return {"backup": store.get_backup(report.id), "drill": store.get_drill(drill.pk)}


def _user(name: str, *, staff: bool, superuser: bool = False) -> Any:
    from django.contrib.auth import get_user_model

    users = get_user_model()
    found = users.objects.filter(username=name).first()
    if found is not None:
        return found
    if superuser:
        return users.objects.create_superuser(name, f"{name}@example.com", secrets.token_hex(8))
    return users.objects.create_user(name, is_staff=staff, password=secrets.token_hex(8))


@pytest.fixture
def admin_client(history: dict[str, Any]) -> Any:
    from django.test import Client

    client = Client()
    client.force_login(_user("ops", staff=True, superuser=True))
    return client


def test_the_dashboard_shows_the_newest_backup_its_copies_and_the_last_drill(
    admin_client: Any, history: dict[str, Any], shop: DemoDatabase
) -> None:
    backup = history["backup"]
    index = admin_client.get("/admin/")
    assert index.status_code == 200
    assert 'href="/admin/strongroom/dashboard/"' in index.content.decode()

    page = admin_client.get("/admin/strongroom/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert backup.id in html and "COMPLETED" in html
    assert f'href="/admin/strongroom/dashboard/{shop.name}/"' in html
    drill_line = html.split('class="last-drill">', 1)[1].split("</p>", 1)[0]
    assert "Last drill: passed" in drill_line and "RTO 3.3 s" in drill_line, drill_line
    board = page.context_data["board"]
    (section,) = [d for d in board.databases if d.name == shop.name]
    assert [k.kind for k in section.kinds] == ["full", "tenant", "base"]
    assert section.kinds[0].newest.id == backup.id
    assert section.kinds[1].newest is None  # no tenant backup yet: "none yet"
    rows = {row.name: row for row in section.locations}
    assert {name: row.copies for name, row in rows.items()} == {
        "local": {"STORED": 1},
        "r2": {"STORED": 1},
    }
    assert all(row.probe is not None and row.probe.ok for row in rows.values())
    assert board.check is not None and board.check.ok, board.check
    assert section.archiver is not None and section.archiver.status is not None
    assert "The server has archived no WAL segment yet" in html

    one = admin_client.get(f"/admin/strongroom/dashboard/{shop.name}/")
    assert one.status_code == 200
    assert [d.name for d in one.context_data["board"].databases] == [shop.name]

    drills = admin_client.get("/admin/strongroom/drill/?ok__exact=1")
    assert drills.status_code == 200 and "strongroom_drill_ab12" in drills.content.decode()
    copies = admin_client.get("/admin/strongroom/backupcopy/?location=r2")
    assert copies.status_code == 200 and backup.id in copies.content.decode()


def test_nothing_in_the_admin_deletes_a_backup_copy_event_or_drill(
    admin_client: Any, history: dict[str, Any]
) -> None:
    from strongroom.catalog import store
    from strongroom.models import Backup, BackupCopy, BackupEvent, Drill

    backup, drill = history["backup"], history["drill"]
    copy = store.get_copy(backup.id, "r2")
    event = store.record_event(backup.id, "verified", message="read back intact")
    for url in (
        f"/admin/strongroom/backup/{backup.id}/delete/",
        f"/admin/strongroom/backupcopy/{copy.pk}/delete/",
        f"/admin/strongroom/backupevent/{event.pk}/delete/",
        f"/admin/strongroom/drill/{drill.pk}/delete/",
    ):
        assert admin_client.post(url, {"post": "yes"}).status_code == 403, url
    listing = admin_client.get("/admin/strongroom/backup/")
    assert listing.status_code == 200 and "delete_selected" not in listing.content.decode()
    bulk = admin_client.post(
        "/admin/strongroom/backup/",
        {"action": "delete_selected", "_selected_action": [backup.id], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    change = admin_client.post(
        f"/admin/strongroom/backup/{backup.id}/change/", {"status": "FAILED"}
    )
    assert change.status_code == 403
    assert Backup.objects.get(id=backup.id).status == "COMPLETED"
    assert BackupCopy.objects.filter(backup_id=backup.id).count() == 2
    assert Drill.objects.filter(pk=drill.pk).exists()
    assert BackupEvent.objects.filter(pk=event.pk).exists()
    assert admin_client.get("/admin/strongroom/backup/add/").status_code == 403


def _metrics_text(response: Any) -> dict[str, float]:
    text = b"".join(response.streaming_content if response.streaming else [response.content])
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_metrics_view_wants_staff_or_the_token(history: dict[str, Any]) -> None:
    from django.test import Client

    anonymous = Client().get("/strongroom/metrics")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in anonymous.content.decode()

    wrong = Client().get("/strongroom/metrics", HTTP_AUTHORIZATION="Bearer not-the-token")
    assert wrong.status_code == 403
    assert TOKEN not in wrong.content.decode()

    scraper = Client().get("/strongroom/metrics?probe=0", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert scraper.status_code == 200
    assert scraper["Content-Type"].startswith("text/plain; version=")
    samples = _metrics_text(scraper)
    backup = history["backup"]
    assert samples["strongroom_backup_last_size_bytes"] == backup.size_bytes
    assert samples["strongroom_drill_last_rto_seconds"] == 3.25
    assert "strongroom_location_up" not in samples

    clerk = Client()
    clerk.force_login(_user("clerk", staff=False))
    assert clerk.get("/strongroom/metrics").status_code == 403

    staff = Client()
    staff.force_login(_user("ops", staff=True, superuser=True))
    probed = staff.get("/strongroom/metrics")
    assert probed.status_code == 200
    assert _metrics_text(probed)["strongroom_location_up"] == 1
    assert staff.post("/strongroom/metrics").status_code == 405


def test_without_a_token_setting_no_bearer_is_accepted(history: dict[str, Any]) -> None:
    from django.test import Client
    from django.test.utils import override_settings

    with override_settings(STRONGROOM_METRICS_TOKEN=None):
        refused = Client().get("/strongroom/metrics", HTTP_AUTHORIZATION="Bearer ")
        assert refused.status_code == 403
        assert Client().get("/strongroom/metrics").status_code == 401


def test_bad_settings_are_one_line_for_staff_and_nothing_for_anyone_else(
    admin_client: Any,
) -> None:
    from django.test import Client
    from django.test.utils import override_settings

    with override_settings(BACKUP_CHECK_TIMEOUT="soon"):
        assert Client().get("/strongroom/metrics").status_code == 401
        refused = Client().get("/strongroom/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert refused.status_code == 403  # no token can be checked against broken settings
        broken = admin_client.get("/strongroom/metrics")
        assert broken.status_code == 503
        assert "BACKUP_CHECK_TIMEOUT" in broken.content.decode()
        page = admin_client.get("/admin/strongroom/dashboard/")
        assert page.status_code == 200
        assert "strongroom is not configured" in page.content.decode()
        assert "BACKUP_CHECK_TIMEOUT" in page.context_data["problem"]
