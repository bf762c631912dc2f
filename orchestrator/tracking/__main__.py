"""``python -m orchestrator.tracking replay FILE``."""

import sys

from orchestrator.tracking.command import main

sys.exit(main())
