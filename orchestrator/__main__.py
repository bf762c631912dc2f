"""``python -m orchestrator COMMAND``: the same as ``activeda COMMAND``."""

import sys

from orchestrator.cli import main

sys.exit(main())
