"""``python -m orchestrator.tracking replay FILE``: send what an MLflow outage left unsent."""

import sys

from orchestrator.tracking.mlflow_runs import main

sys.exit(main())
