"""``python -m orchestrator.cluster``: check `ray up` cluster files offline."""

import sys

from orchestrator.cluster.cluster_file import main

sys.exit(main())
