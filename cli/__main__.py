"""``python -m cli``: the ``gnaq`` command."""

import sys

from cli.main import main

sys.exit(main())
