"""A training job that fails for good is one line naming the error; the full traceback goes to a log file."""

import traceback

from experiment_config import load_config
from trainers.job import TrainJob
from trainers.train_loop import TrainingJobError, WorkerFailure, failure_log_path


def test_a_failed_job_is_one_line_and_the_traceback_is_in_the_log_it_names(tmp_path):
    from ray.train.v2.api.exceptions import WorkerGroupError

    try:
        {}["missing"]
    except KeyError:
        worker_traceback = traceback.format_exc()  # what a Train worker sends back as WorkerFailure
    failure = WorkerGroupError(
        "[Rank 0 Error Snippet]: ...truncated...",
        {0: WorkerFailure(worker_traceback), 1: WorkerFailure(worker_traceback)},
    )
    job = TrainJob(mode="adapt", config=load_config(None, {"output_dir": str(tmp_path)}))
    path = failure_log_path(job, "round-001")
    error = TrainingJobError.from_failure(failure, "round-001", path)
    message = str(error)
    assert "\n" not in message
    assert message == f"training job 'round-001' failed: KeyError: 'missing' (full traceback: {path})"
    assert path.parent == tmp_path / "logs"
    logged = path.read_text()
    assert logged.count("Traceback (most recent call last)") == 2 and "rank 1:" in logged
    assert "in test_a_failed_job_is_one_line" in logged  # the frame where it happened
