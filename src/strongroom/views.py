"""Django views a project adds to its ``urls.py``: the Prometheus scrape endpoint.

    from strongroom import views
    urlpatterns += [path("strongroom/metrics", views.metrics)]

Backup state says where an attacker would find the data, so it is never public: a logged-in
staff user may read it, and so may a scraper sending ``Authorization: Bearer <token>`` with the
token of ``STRONGROOM_METRICS_TOKEN`` (compared in constant time, never logged). Anyone else
gets 401 (no credentials) or 403 (a user who is not staff, a wrong token).
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from strongroom.conf import config_from_django
from strongroom.config import Config
from strongroom.errors import StrongroomError
from strongroom.services import metrics as metrics_service

_BEARER = "bearer "


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics of ``strongroom metrics``; ``?probe=0`` leaves the location probes out."""
    try:
        config = config_from_django()
    except StrongroomError as exc:
        if not _is_staff(request):
            return _refused(request)
        return HttpResponse(f"strongroom: {exc}\n", status=503, content_type="text/plain")
    if not (_is_staff(request) or _token_matches(request, config)):
        return _refused(request)
    try:
        registry = metrics_service.collect(config, probe=request.GET.get("probe") != "0")
    except StrongroomError as exc:  # the catalog cannot be read: say so, to this caller only
        return HttpResponse(f"strongroom: {exc}\n", status=503, content_type="text/plain")
    return HttpResponse(
        metrics_service.exposition(registry), content_type=metrics_service.CONTENT_TYPE_LATEST
    )


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _presented_token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith(_BEARER):
        return None
    return header[len(_BEARER) :].strip()


def _token_matches(request: HttpRequest, config: Config) -> bool:
    presented = _presented_token(request)
    if not presented or not config.metrics_token:
        return False
    return hmac.compare_digest(presented.encode(), config.metrics_token.encode())


def _refused(request: HttpRequest) -> HttpResponse:
    """401 asks for credentials; 403 when some were given and are not enough."""
    user = getattr(request, "user", None)
    tried = _presented_token(request) is not None or bool(user and user.is_authenticated)
    if tried:
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    response = HttpResponse(
        "authentication required: log in as staff, or send Authorization: Bearer "
        "<STRONGROOM_METRICS_TOKEN>\n",
        status=401,
        content_type="text/plain",
    )
    response["WWW-Authenticate"] = 'Bearer realm="strongroom metrics"'
    return response
