"""What a sweep keeps in its folder to be resumed: ``sweep.json`` (the parent run and the config), and
Tune's own experiment state, repaired from the last readable copy when a crash damaged it."""

from __future__ import annotations

import json
import logging
import pickletools
from pathlib import Path

from experiment_config import (
    ConfigError,
    ExperimentConfig,
    from_dict,
)
from trainers.files import atomic_write_json

log = logging.getLogger("activeda")


SWEEP_STATE = "sweep.json"
# Sections that may differ when a sweep is resumed: where and how fast it runs, not what it computes.
RESUMABLE_DIFFERENCES = (
    "train.",
    "ranking.",
    "sweep.max_concurrent",
    "tracking.",
    "storage.endpoint",
    "storage.region",
)


def load_sweep_state(sweep_dir: Path, cfg: ExperimentConfig) -> dict:
    """The saved state of an interrupted sweep; refuses one started with a different experiment."""
    path = sweep_dir / SWEEP_STATE
    return sweep_state_from_text(path.read_text() if path.is_file() else None, sweep_dir, cfg)


def sweep_state_from_text(text: str | None, sweep_dir: Path, cfg: ExperimentConfig) -> dict:
    """``load_sweep_state`` for the text of a ``sweep.json`` (None: there is none)."""
    if text is None:
        raise ConfigError("", f"nothing to resume: no sweep was started at '{sweep_dir}'")
    try:
        state = json.loads(text)
        state["config"]["sweep"]["search_space"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("", f"cannot resume '{sweep_dir}': its {SWEEP_STATE} is damaged") from None
    saved = from_dict(state["config"]).flat()
    changed = sorted(k for k, v in cfg.flat().items() if saved.get(k) != v and not k.startswith(RESUMABLE_DIFFERENCES))
    if changed or state["config"]["sweep"]["search_space"] != cfg.sweep.search_space:
        keys = ", ".join(changed) or "sweep.search_space"
        raise ConfigError(
            "",
            f"cannot resume '{sweep_dir}': it was started with different settings ({keys}); "
            f"resume with the same config, or start a new sweep under another sweep.name",
        )
    return state


def restorable_tune_state(storage, sweep_dir: Path, say=print) -> bool:
    """Whether ``--resume`` can restore Tune from its saved state (repairing it from the kept copy if
    needed); False when Tune never saved one and no trial started, so the Tune run starts afresh.

    Tune's own restore, given a state that is missing or damaged, starts the trials anew under new
    ids (and without the param space): they would buy their labels again. Seen twice: a driver killed
    before Tune's first save (``tuner.pkl`` alone), and a state cut off on a full disk. So a damaged
    state is replaced by the last readable copy (``TuneStateKeeper``), and without one the resume is
    refused while trials have started, rather than buying their labels again.
    """
    tune_dir = sweep_dir / "tune"
    names = storage.listdir(storage.location(tune_dir))
    if "tuner.pkl" in names and readable_state(storage, tune_dir) is not None:
        return True
    states = sorted(n for n in names if n.startswith(EXPERIMENT_STATE) and n.endswith(".json"))
    kept = readable_state(storage, sweep_dir / STATE_BACKUP)
    if "tuner.pkl" in names and states and kept is not None:
        newest = states[-1]
        for name, data in kept.items():  # under the damaged files' names: Tune reads the newest
            target = newest if name.startswith(EXPERIMENT_STATE) else SEARCHER_STATE + newest[len(EXPERIMENT_STATE) :]
            storage.write_bytes(storage.join(storage.location(tune_dir), target), data)
        say(f"Tune's experiment state '{newest}' was damaged; restored the last readable copy from {STATE_BACKUP}/")
        return True
    started = sorted(p.parent.name for p in (sweep_dir / "trials").glob("*/progress.json"))
    if started:
        problem = f"its experiment state ('{states[-1]}') is damaged" if states else "it saved no experiment state"
        raise ConfigError(
            "",
            f"cannot resume '{sweep_dir}': Tune cannot be restored ({problem}, and no readable "
            f"copy was kept); starting the trials anew would buy their labels again. Their label "
            f"stores and checkpoints are intact under '{sweep_dir / 'trials'}'",
        )
    return False


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=1, sort_keys=True)


# --- Tune's experiment state: kept readable ------------------------------------------------------

EXPERIMENT_STATE, SEARCHER_STATE = "experiment_state-", "basic-variant-state-"
STATE_BACKUP = "tune-state-backup"  # in the sweep folder: the last readable copy of Tune's state


def readable_state(storage, tune_dir) -> dict[str, bytes] | None:
    """The newest experiment state in ``tune_dir`` and its searcher state (file name -> bytes), when
    both are whole; None when there is none or it is damaged (say, cut off on a full disk)."""
    location = storage.location(tune_dir)
    return _readable(storage.listdir(location), lambda name: storage.read_bytes(storage.join(location, name)))


def readable_local_state(folder: str | Path) -> dict[str, bytes] | None:
    """``readable_state`` of a local folder (Tune's driver staging folder, which is never on the sweep's
    storage)."""
    folder = Path(folder)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return _readable(names, lambda name: (folder / name).read_bytes())


def _whole(name: str, data: bytes | None) -> bool:
    """The experiment state is JSON; the searcher state, despite its name, a pickle: its opcodes are
    walked to the final STOP (``pickletools``, which builds no object) to tell a whole one."""
    if not data:
        return False
    try:
        if name.startswith(EXPERIMENT_STATE):
            json.loads(data)
        else:
            ops = list(pickletools.genops(data))
            return bool(ops) and ops[-1][0].name == "STOP"
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _readable(names: list[str], read) -> dict[str, bytes] | None:
    states = sorted(n for n in names if n.startswith(EXPERIMENT_STATE) and n.endswith(".json"))
    if not states:
        return None
    newest = states[-1]
    files = [newest]
    searcher = SEARCHER_STATE + newest[len(EXPERIMENT_STATE) :]
    if searcher in names:
        files.append(searcher)
    out = {}
    for name in files:
        try:
            data = read(name)
        except OSError:
            return None
        if not _whole(name, data):
            return None
        out[name] = data
    return out
