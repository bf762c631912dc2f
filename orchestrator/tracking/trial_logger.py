"""The sweep's Tune callback that logs every trial to MLflow through a durable outbox, and the replay of
what an outage left unsent (``python -m orchestrator.tracking replay``)."""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback

from orchestrator.cluster.folder_lock import SweepFolderLock
from orchestrator.tracking.mlflow_runs import (
    CHECKPOINT_TAG,
    METRIC_PREFIXES,
    UNSENT_FILE,
    SweepTracking,
    TrackingError,
    append_unsent,
    check_tracking_uri,
    display_uri,
    final_checkpoint,
    log,
    log_params,
    log_round_images,
    log_trial_artifacts,
    new_record_id,
    read_outbox,
    replay_hint,
    rewrite_outbox,
)


class MlflowTrialLogger(Callback):
    """Tune callback (runs in the driver): a child MLflow run per trial, metrics at ``step=round``.

    ``trial_params(trial_config) -> (params, tags)`` turns a trial's sampled config into the
    flattened parameters and the grouping tags to record.

    If the tracking server goes away, training goes on: every MLflow operation waits in an outbox,
    in order, and is retried at the next event; a warning says how much is waiting.

    With ``unsent_path`` the outbox is durable: each operation is appended to that file (JSON lines,
    each naming its experiment, parent run and trial folder) and synced *before* it counts as queued,
    and a ``{"sent": id}`` line follows once MLflow has it; the file is removed whenever everything in
    it is sent. So a driver killed during an outage loses nothing: the next logger of the same sweep
    (``--resume``) sends what the file still holds first, and ``python -m orchestrator.tracking
    replay`` sends it when the sweep is not resumed. An operation that was sent but whose ``sent``
    line the kill prevented is sent again, and sending is idempotent (a trial's existing run is
    continued, a round already logged is skipped): every metric arrives once.
    """

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        parent_run_id: str,
        trial_params,
        trial_dir=None,
        unsent_path: str | None = None,
    ):
        self.uri, self.experiment_name, self.parent_run_id = uri, experiment_name, parent_run_id
        self.trial_params = trial_params
        self.trial_dir = trial_dir  # trial_id -> folder whose files become the run's artifacts
        self.unsent_path = unsent_path
        self._tracking: SweepTracking | None = None
        self._runs: dict[str, str] = {}
        self._outbox: list[dict] = []  # records, as in the file
        self._failing = False
        self._loaded = False  # whether the file's records of an earlier driver are in the outbox yet
        self._disk_warned = False

    @property
    def tracking(self) -> SweepTracking:
        if self._tracking is None:
            self._tracking = SweepTracking(self.uri, self.experiment_name)
        return self._tracking

    def __getstate__(self):  # the MLflow client is not picklable; rebuild it after a restore
        state = dict(self.__dict__)
        state["_tracking"] = None
        if self.unsent_path:  # the file holds the outbox; a restored logger reads it from there
            state.update(_outbox=[], _loaded=False)
        return state

    def __setstate__(self, state):  # a logger pickled by an older version lacks the newer fields
        self.__dict__.update(
            {
                "_outbox": [],
                "_failing": False,
                "unsent_path": None,
                "trial_dir": None,
                "_loaded": False,
                "_disk_warned": False,
                **state,
                "_tracking": None,
            }
        )
        self._outbox = [r if isinstance(r, dict) else self._record(r) for r in self._outbox]

    # -- events -------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._load_pending()
        if trial.trial_id in self._runs or any(
            r["action"] == "create" and r.get("trial_id") == trial.trial_id for r in self._outbox
        ):
            return
        params, tags = self.trial_params(trial.config)
        self._send(("create", trial.trial_id, str(trial), params, tags))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES)}
        self._send(("metrics", trial.trial_id, str(trial), metrics, int(result.get("round", 0))))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._send(("end", trial.trial_id, str(trial), "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._send(("end", trial.trial_id, str(trial), "FAILED"))

    def on_experiment_end(self, trials, **info):
        self._flush()
        if self._outbox and self.unsent_path:
            log.warning(
                "MLflow at %s stayed unreachable: %d operations written to %s; to send them later: %s",
                display_uri(self.uri),
                len(self._outbox),
                self.unsent_path,
                replay_hint(self.unsent_path, self.uri),
            )
            self._outbox = []  # they are in the file: whoever sends them next reads them from there

    # -- the outbox ---------------------------------------------------------------------------
    def _record(self, action: tuple) -> dict:
        return {
            "id": new_record_id(),
            "action": action[0],
            "trial_id": action[1],
            "trial": action[2],
            "data": list(action[3:]),
            "experiment": self.experiment_name,
            "parent_run_id": self.parent_run_id,
            "trial_dir": str(self.trial_dir(action[1])) if self.trial_dir is not None else None,
        }

    def _load_pending(self) -> None:
        """Once: put what an earlier driver of this sweep left unsent in the file ahead of the outbox."""
        if self._loaded:
            return
        self._loaded = True
        if self.unsent_path and Path(self.unsent_path).is_file():
            earlier = [
                r
                for r in read_outbox(self.unsent_path, repair=True)
                if r["parent_run_id"] == self.parent_run_id and r["experiment"] == self.experiment_name
            ]
            if earlier:
                log.warning(
                    "sending %d MLflow operation(s) an earlier driver of this sweep left in %s",
                    len(earlier),
                    self.unsent_path,
                )
            self._outbox = earlier + self._outbox

    def _send(self, action: tuple) -> None:
        self._load_pending()
        record = self._record(action)
        self._write(lambda: append_unsent(self.unsent_path, [record]))  # on disk before it counts as queued
        self._outbox.append(record)
        self._flush()

    def _write(self, write) -> None:
        """Write to the outbox file; on a full or unwritable disk the outbox keeps working in memory
        (said once): tracking must not be what stops a sweep whose trials report the disk problem."""
        if not self.unsent_path:
            return
        try:
            write()
        except OSError as err:
            if not self._disk_warned:
                log.warning(
                    "cannot write the MLflow outbox %s (%s); keeping what waits in memory only",
                    self.unsent_path,
                    err.strerror or err,
                )
                self._disk_warned = True

    def _flush(self) -> None:
        self._load_pending()
        sent_any = False
        while self._outbox:
            record = self._outbox[0]
            try:
                self._perform_record(record)
            except Exception as err:  # a tracking outage must not stop the sweep
                if not self._failing:
                    log.warning(
                        "MLflow at %s is unreachable (%s); buffering, training goes on",
                        display_uri(self.uri),
                        type(err).__name__,
                    )
                self._failing = True
                self._tracking = None  # reconnect next time
                return
            self._outbox.pop(0)
            sent_any = True
            self._write(lambda: append_unsent(self.unsent_path, [{"sent": record["id"]}]))
            if self._failing and not self._outbox:
                log.warning("MLflow at %s is back; everything buffered has been logged", display_uri(self.uri))
                self._failing = False
        if sent_any and self.unsent_path and Path(self.unsent_path).is_file():
            # Everything of this logger is sent: keep only what is not (another sweep's leftovers).
            self._write(
                lambda: rewrite_outbox(
                    self.unsent_path,
                    [r for r in read_outbox(self.unsent_path) if r["parent_run_id"] != self.parent_run_id],
                )
            )

    def _perform_record(self, record: dict) -> None:
        if record["action"] == "sweep-end":
            report = record.get("report")
            if report and Path(report).is_dir():
                self.tracking.client.log_artifacts(record["parent_run_id"], report, artifact_path="report")
            self.tracking.end(record["parent_run_id"], record["status"])
        else:
            self._perform((record["action"], record["trial_id"], record["trial"], *record["data"]))

    def _existing_run(self, trial_id: str):
        """The trial's run under this sweep's parent, if MLflow has one already (else None)."""
        existing = self.tracking.client.search_runs(
            [self.tracking.experiment_id],
            f"tags.`activeda.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
        )
        if not existing:
            return None
        self._runs[trial_id] = existing[0].info.run_id
        return existing[0]

    def _perform(self, action: tuple) -> None:
        kind, trial_id = action[0], action[1]
        if kind == "create":
            _, _, name, params, tags = action
            client = self.tracking.client
            # A resumed sweep restarts its unfinished trials: they continue their own runs.
            existing = self._existing_run(trial_id)
            if existing is not None:
                client.update_run(existing.info.run_id, status="RUNNING")
                if not existing.data.params:  # the run was created, then MLflow went away before its params
                    log_params(client, existing.info.run_id, params)
                return
            run = client.create_run(
                self.tracking.experiment_id,
                run_name=name,
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "activeda.kind": "trial",
                    "activeda.trial_id": trial_id,
                    **tags,
                },
            )
            self._runs[trial_id] = run.info.run_id
            log_params(client, run.info.run_id, params)
        elif trial_id not in self._runs and self._existing_run(trial_id) is None:
            return  # the trial's run was never created (its start came before this logger existed)
        elif kind == "metrics":
            _, _, name, metrics, step = action
            run_id = self._runs[trial_id]
            # Idempotent: a round replayed after a resume (or a retried send) is not logged twice.
            # Any key of the batch tells, not target/miou alone: a NaN mIoU is dropped, the rest is logged.
            # The first key already logged at this step decides: the same value means this batch was
            # sent before; another value means the round was done again differently (a PBT clone
            # continuing another trial's model), and its new values are logged too.
            client = self.tracking.client
            keys = sorted(metrics, key=lambda key: key != "target/miou")  # the usual answer first
            for key in keys:
                logged = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
                if logged:
                    if isinstance(metrics[key], (int, float)) and float(metrics[key]) in logged:
                        return
                    break
            self.tracking.log_metrics(run_id, metrics, step=step, context=name)
            folder = self.trial_dir(trial_id) if self.trial_dir is not None else None
            if folder is not None:  # a replayed record may name no folder
                log_round_images(self.tracking.client, run_id, Path(folder), step)
        elif kind == "end":
            run_id = self._runs[trial_id]
            folder = self.trial_dir(trial_id) if self.trial_dir is not None else None
            if folder is not None:
                log_trial_artifacts(self.tracking.client, run_id, Path(folder))
                checkpoint = final_checkpoint(Path(folder))
                if checkpoint:
                    self.tracking.client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)
            self.tracking.end(run_id, action[3])


def replay_unsent(path: str | Path, uri: str) -> tuple[int, int]:
    """Send what an outage left in a sweep's unsent file, in order; returns (sent, still unsent).

    Sending is idempotent (a trial's existing run is continued, a round already logged is skipped),
    so a replay that is interrupted, or run twice, logs nothing twice. What could not be sent stays in
    the file; the file is removed once everything is in MLflow. A sweep that is running on the same
    folder holds its lock, and the replay is refused then (the sweep sends its own outbox).
    """
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"unsent-metrics file '{path}' does not exist")
    records = read_outbox(path)
    check_tracking_uri(uri)
    lock = SweepFolderLock.acquire(path.parent) if path.name == UNSENT_FILE else None
    try:
        folders = {r["trial_id"]: r.get("trial_dir") for r in records if "trial_id" in r}
        loggers: dict[tuple[str, str], MlflowTrialLogger] = {}
        sent = 0
        for record in records:
            key = (record["experiment"], record["parent_run_id"])
            logger = loggers.setdefault(key, MlflowTrialLogger(uri, *key, trial_params=None, trial_dir=folders.get))
            try:
                logger._perform_record(record)
            except Exception as err:  # stop at the first failure: what follows may depend on it
                log.warning(
                    "MLflow at %s failed on record %d of '%s' (%s: %s)", uri, sent + 1, path, type(err).__name__, err
                )
                break
            sent += 1
        rewrite_outbox(path, records[sent:])
    finally:
        if lock is not None:
            lock.release()
    return sent, len(records) - sent
