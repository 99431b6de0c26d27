"""``python manage.py strongroom …``: the same commands as the ``strongroom`` CLI.

Configuration comes from Django settings (over the environment) and the catalog is the
project's own database, as in the seed.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "strongroom backup | list | show | verify | restore | check | setup-role | keygen"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("args", nargs="*", help="strongroom arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        # Hand everything after "strongroom" to our own parser so --help and flags are ours.
        from strongroom.conf import config_from_django
        from strongroom.interfaces.cli import config_file_option, main

        self._setup_django_only()
        args = argv[2:]
        lazy = args[:1] in (["keygen"], ["demo"], ["--help"], ["-h"], [])
        config = None if lazy else config_from_django(config_file_option(args))
        code = main(args, config=config)
        sys.exit(code)

    def _setup_django_only(self) -> None:
        import django

        django.setup()

    def handle(self, *args: Any, **options: Any) -> None:
        from strongroom.conf import config_from_django
        from strongroom.interfaces.cli import config_file_option, main

        code = main(list(args), config=config_from_django(config_file_option(args)))
        if code:
            raise CommandError(f"strongroom exited with status {code}", returncode=code)
