"""``python -m orchestrator.sweep``."""

import sys

from orchestrator.sweep.command import main

sys.exit(main())
