"""The example needs no views of its own: the admin shows the shop and the backup catalog.

``strongroom/metrics`` is the Prometheus scrape endpoint (staff, or ``Authorization: Bearer``
with ``STRONGROOM_METRICS_TOKEN``).
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from strongroom import views as strongroom_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("strongroom/metrics", strongroom_views.metrics, name="strongroom-metrics"),
]
