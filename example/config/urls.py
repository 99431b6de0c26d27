"""The example needs no views of its own: the admin shows the shop and the backup catalog."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
