"""`python -m wenzhen` runs the CLI."""

import sys

from wenzhen.cli import main

sys.exit(main())
