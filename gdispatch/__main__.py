"""``python -m gdispatch`` runs the command line."""

import sys

from gdispatch.cli import main

sys.exit(main())
