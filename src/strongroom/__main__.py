"""``python -m strongroom``: the same command line as the ``strongroom`` executable.

PostgreSQL's ``restore_command`` uses it when strongroom was not started as ``strongroom``.
"""

import sys

from strongroom.interfaces.entry import main

sys.exit(main())
