"""`python -m lowc ...`: see lowc.cli."""

import sys

from lowc.cli import main

sys.exit(main())
