"""The Ray Tune function trainable: one trial, with its progress saved at every round so that a restored
sweep continues it after its last finished round and a PBT clone takes over another trial's model and labels."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from experiment_config.loading import from_dict, with_overrides
from orchestrator.cluster.storage import open_storage
from orchestrator.labels.store import LabelStore
from orchestrator.round.loop import TrialProgress, run_experiment
from trainers.files import atomic_write_text

PROGRESS_FILE = "progress.json"


def _own_progress(storage, path: Path, trial_id: str) -> dict | None:
    """The trial's own progress record with the highest round: this node's copy or the one in storage.uri.

    Both are read: a node keeps its copy when the trial moves on to another node, so a trial that
    comes back to it (Tune restores trials wherever there is room) finds that copy out of date.
    """
    texts = [path.read_text()] if path.is_file() else []
    if storage.remote:
        texts.append(storage.read_text(storage.location(path)))
    records = [r for r in map(json.loads, filter(None, texts)) if r["progress"]["trial_id"] == trial_id]
    return max(records, key=lambda r: r["progress"]["round"], default=None)


def tune_trial(sampled: dict, base: dict, source_checkpoint: str, source_metrics: dict, sweep_dir: str) -> None:
    """Ray Tune function trainable: one trial with the sampled keys applied to the base config.

    Every finished round is reported with a Tune checkpoint holding ``progress.json`` and a copy of
    the label store, so a restored sweep continues the trial after its last finished round, and a
    PBT clone starts from another trial's model *and* labels.
    """
    import ray.tune as tune

    cfg = with_overrides(from_dict(base), sampled)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(sweep_dir) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
    # A trial restarted on another node finds its label store and progress record in shared storage.
    storage = open_storage(cfg)
    storage.pull_folder(trial_dir / "labels", "round-*.parquet")

    resume, resume_record = None, None  # where the trial stands, and the progress record (with its metrics) saying so
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            resume_record = json.loads((Path(directory) / PROGRESS_FILE).read_text())
            resume = TrialProgress(**resume_record["progress"])
            saved = LabelStore(Path(directory) / "labels")
            if resume.trial_id != trial_id:  # a PBT clone: take over the other trial's labels
                # This trial's own rounds are set aside, not overwritten or mixed in: they were paid for,
                # but were chosen by another model, and could repeat pixels of the rounds taken over.
                aside = LabelStore(trial_dir / "labels").set_aside(keep_if_same_as=saved)
                saved.copy_to(trial_dir / "labels", upto_round=resume.round)
                print(
                    f"[{context.get_trial_name()}] continuing from trial {resume.trial_id} after its round "
                    f"{resume.round} (PBT): its model and {len(saved.rounds())} round(s) of its labels"
                    + (f"; this trial's own {len(aside)} round(s) set aside in {aside[0].parent}" if aside else ""),
                    flush=True,
                )
            elif not set(saved.rounds()) <= set(LabelStore(trial_dir / "labels").rounds()):
                # This node lacks the trial's folder (and no copy was in shared storage): the labels
                # come with the checkpoint.
                saved.copy_to(trial_dir / "labels", upto_round=resume.round)
    # Tune snapshots its experiment state every few seconds; a driver killed in between restores a
    # trial from an older round than the trial itself finished. The trial's own record is newer then.
    own_file = trial_dir / PROGRESS_FILE
    own = _own_progress(storage, own_file, trial_id)
    if own is not None and (resume is None or own["progress"]["round"] > resume.round):
        resume, resume_record = TrialProgress(**own["progress"]), own

    def report(metrics: dict, state: TrialProgress) -> None:
        record = json.dumps({"progress": dataclasses.asdict(state), "metrics": metrics}, default=float)
        with tempfile.TemporaryDirectory(prefix="activeda-trial-") as tmp:
            (Path(tmp) / PROGRESS_FILE).write_text(record)
            LabelStore(trial_dir / "labels").copy_to(Path(tmp) / "labels", upto_round=state.round)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        atomic_write_text(own_file, record)
        storage.push(own_file)

    if resume_record is not None and resume.round >= cfg.selection.rounds:
        # Every round was done before the interruption: hand Tune the final result, train nothing.
        report(resume_record["metrics"], resume)  # the metrics of resume.round, whichever record it came from
        return
    run_experiment(
        cfg,
        trial_dir,
        source_checkpoint,
        source_metrics,
        report=report,
        resume=resume,
        trial_id=trial_id,
        progress=lambda msg: print(f"[{context.get_trial_name()}] {msg}", flush=True),
    )
