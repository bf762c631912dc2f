"""A round's queries through a running Label Studio and back into the label store; prints PASS or FAIL.

    bash scripts/install_labelstudio.sh             # once: Label Studio in .venv-labelstudio
    python -m benchmarks.labelstudio_roundtrip      # about 3 minutes here, most of it Label Studio's start

For a round of point queries and a round of region queries (the synthetic target pool in the
Cityscapes layout, larger than the selection grid: ``benchmarks.annotation_roundtrip``), it

1. exports the round with ``python -m orchestrator.annotate export --format labelstudio`` (images
   served by Label Studio's local-files storage, ``--image-url-prefix '/data/local-files/?d='``);
2. starts Label Studio from .venv-labelstudio on 127.0.0.1 (a free port, its own data folder, no
   browser, a user and API token made from environment variables), creates a project with the
   exported labeling config and a local-files storage of the pool, and imports the tasks through
   the API (each image must then be served at its task's URL);
3. annotates every task through the API as a person's annotation is stored: the prediction's
   results taken over, each key point given the class under it, the class regions painted over the
   query mask as brush strokes encoded by the Label Studio SDK's own brush RLE (``mask2rle``), and
   the query masks Label Studio holds decoded by the SDK too (``decode_rle``);
4. exports the project through the API (the JSON export a person downloads), imports it with
   ``python -m orchestrator.annotate import --format labelstudio``, and compares the label store with
   the simulated oracle at every queried pixel;
5. stops Label Studio and removes its folder, whatever happened.

``--record FILE`` writes the run (date, commit, versions, timings, result) as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-labelstudio"
TOKEN = "activeda-roundtrip-0123456789abcdef"  # a throw-away server's API token (legacy token auth)
UNSURE = "unsure"

# Runs in Label Studio's venv: its SDK's brush RLE, the one the Label Studio converter uses.
SDK_BRUSH = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
request = json.load(sys.stdin)
out = {"encoded": {}, "decoded": {}}
for name, path in request["encode"].items():
    out["encoded"][name] = [int(v) for v in mask2rle(np.load(path).astype(np.uint8) * 255)]
for name, item in request["decode"].items():
    rgba = np.asarray(decode_rle(item["rle"]), np.uint8).reshape(item["height"], item["width"], 4)
    np.save(item["out"], rgba[..., 3] > 0)
json.dump(out, sys.stdout)
"""


class RoundTripError(RuntimeError):
    """A step of the round trip failed; the message says which."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabelStudio:
    """One Label Studio server on 127.0.0.1 with its own data folder, and its REST API."""

    def __init__(self, venv: Path, folder: Path, port: int):
        self.venv, self.folder, self.port = venv, folder, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log = folder / "label-studio.log"

    def start(self, timeout_s: float) -> float:
        """Start the server and wait until it answers /health; returns the seconds it took."""
        env = {
            **os.environ,
            "LABEL_STUDIO_USERNAME": "annotator@example.com",
            "LABEL_STUDIO_PASSWORD": "annotator-password",
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/",  # task URLs carry absolute paths
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no calls out of this machine
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        }
        command = [str(self.venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(self.folder / "data"), "--enable-legacy-api-token"]
        started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=self.folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RoundTripError(f"Label Studio exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(1)
        raise RoundTripError(f"Label Studio did not answer /health within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            self.process.wait()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise RoundTripError(f"{method} {path}: HTTP {err.code} {err.read()[:500]!r}") from None
        return payload if raw else json.loads(payload)


def sdk_brush(venv: Path, encode: dict[str, Path], decode: dict[str, dict]) -> dict:
    """Brush RLE through the Label Studio SDK in its own venv: masks (.npy) -> RLE, RLE -> masks (.npy)."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SDK_BRUSH],
        input=json.dumps({"encode": {k: str(v) for k, v in encode.items()}, "decode": decode}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RoundTripError(f"the Label Studio SDK's brush RLE failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel: a person's brush covers the edge of what is shown, and a bit more."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def annotate(task: dict, round_, venv: Path, scratch: Path, classes: tuple[str, ...]) -> list[dict]:
    """The result a person's annotation stores for one task, answering with the ground truth."""
    (prediction,) = task["predictions"]
    image_id = task["data"]["activeda_image_id"]
    truth = round_.native_labels[image_id]
    height, width = truth.shape
    result = [dict(item, id=f"a{n}") for n, item in enumerate(prediction["result"])]  # taken over
    if all(item["type"] == "keypointlabels" for item in result):
        for item in result:  # the class under each point, where Label Studio draws it
            x = int(item["value"]["x"] / 100 * item["original_width"])
            y = int(item["value"]["y"] / 100 * item["original_height"])
            label = int(truth[y, x])
            item["value"] = {**item["value"], "keypointlabels": [classes[label] if label < len(classes) else UNSURE]}
        return result
    (query,) = result
    if (query["original_height"], query["original_width"]) != (height, width):
        raise RoundTripError(f"image {image_id}: the query mask is not the image's size")
    shown = scratch / f"query-{image_id}.npy"
    sdk_brush(venv, {}, {"query": {"rle": query["value"]["rle"], "height": height, "width": width, "out": str(shown)}})
    painted = _dilate(np.load(shown))
    strokes = {}
    for k in np.unique(truth[painted]).tolist():
        if k < len(classes):  # a pixel without ground truth stays 'unsure' (the query mask under it)
            path = scratch / f"stroke-{image_id}-{k}.npy"
            np.save(path, (truth == k) & painted)
            strokes[classes[k]] = path
    encoded = sdk_brush(venv, strokes, {})["encoded"]
    for n, (name, rle) in enumerate(encoded.items()):
        result.append(
            {
                **{key: query[key] for key in ("from_name", "to_name", "type", "original_width", "original_height")},
                "image_rotation": 0,
                "id": f"s{n}",
                "value": {"format": "rle", "rle": rle, "brushlabels": [name]},
            }
        )
    return result


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def round_trip(kind: str, studio: LabelStudio, venv: Path, work: Path) -> list[str]:
    """One round (``points`` or ``regions``) through Label Studio; returns the problems (none: pass)."""
    from benchmarks.annotation_roundtrip import make_round, mismatches

    round_ = make_round(work / kind, regions=kind == "regions")
    exported = work / kind / "labelstudio"
    trial = ["--trial-dir", str(round_.trial_dir), "--round", str(round_.round_index)]
    done = run_cli(
        "orchestrator.annotate",
        "export",
        *trial,
        "--format",
        "labelstudio",
        "--out",
        str(exported),
        "--image-url-prefix",
        "/data/local-files/?d=",
    )
    if done.returncode != 0:
        raise RoundTripError(f"annotate export failed: {done.stderr.strip()}")
    tasks = json.loads((exported / "tasks.json").read_text())
    project = studio.call(
        "POST",
        "/api/projects",
        {"title": f"activeda round 1 {kind}", "label_config": (exported / "labeling_config.xml").read_text()},
    )
    pool = {str(Path(t["data"]["image"].split("?d=", 1)[1]).parent) for t in tasks}
    for path in sorted(pool):  # Label Studio serves local files only from a storage's folder
        studio.call(
            "POST", "/api/storages/localfiles", {"project": project["id"], "path": path, "use_blob_urls": False}
        )
    imported = studio.call("POST", f"/api/projects/{project['id']}/import", tasks)
    if (imported["task_count"], imported["prediction_count"]) != (len(tasks), len(tasks)):
        raise RoundTripError(f"{kind}: Label Studio imported {imported}, expected {len(tasks)} tasks")

    held = studio.call("GET", f"/api/projects/{project['id']}/tasks/?page_size={len(tasks) + 10}")
    if len(held) != len(tasks):
        raise RoundTripError(f"{kind}: Label Studio holds {len(held)} tasks, {len(tasks)} were imported")
    scratch = work / kind / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    for task in held:
        served = studio.call("GET", task["data"]["image"], raw=True)  # the image, as the labeling page loads it
        if served != Path(task["data"]["image"].split("?d=", 1)[1]).read_bytes():
            raise RoundTripError(f"{kind}: Label Studio does not serve the image of task {task['id']}")
        studio.call(
            "POST",
            f"/api/tasks/{task['id']}/annotations/",
            {
                "result": annotate(task, round_, venv, scratch, round_.classes),
                "was_cancelled": False,
                "ground_truth": False,
                "lead_time": 12.5,
                "parent_prediction": task["predictions"][0]["id"],
            },
        )
    export = studio.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON", raw=True)
    export_file = work / kind / "label-studio-export.json"
    export_file.write_bytes(export)
    recorded = run_cli(
        "orchestrator.annotate", "import", *trial, "--format", "labelstudio", "--answers", str(export_file)
    )
    if recorded.returncode != 0:
        return [f"annotate import refused Label Studio's export: {recorded.stderr.strip()}"]
    return mismatches(round_)


def versions(venv: Path) -> dict[str, str]:
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from importlib.metadata import version as v; import json; "
            "print(json.dumps({p: v(p) for p in ('label-studio', 'label-studio-sdk', 'Django')}))",
        ],
        capture_output=True,
        text=True,
    )
    found = json.loads(probe.stdout) if probe.returncode == 0 else {}
    return {**found, "python": platform.python_version()}


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
    except OSError:
        return "unknown"
    return head.strip() + (" (uncommitted changes)" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.labelstudio_roundtrip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--venv", default=str(DEFAULT_VENV), help="Label Studio's venv (scripts/install_labelstudio.sh)"
    )
    parser.add_argument("--startup-timeout", type=float, default=600, metavar="S", help="seconds to wait for /health")
    parser.add_argument("--record", metavar="FILE", help="also write the run as JSON to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (Label Studio's data, exports)")
    args = parser.parse_args(argv)
    venv = Path(args.venv)
    if not (venv / "bin" / "label-studio").exists():
        print(f"FAIL: no Label Studio in '{venv}': run bash scripts/install_labelstudio.sh", file=sys.stderr)
        return 2

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="activeda-labelstudio-"))
    studio = LabelStudio(venv, work, free_port())
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "versions": versions(venv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": {},
    }
    problems: list[str] = []
    try:
        record["startup_s"] = round(studio.start(args.startup_timeout), 1)
        print(f"Label Studio {record['versions'].get('label-studio', '?')} answered in {record['startup_s']} s")
        for kind in ("points", "regions"):
            found = round_trip(kind, studio, venv, work)
            record["rounds"][kind] = found or "pass"
            print(f"{kind}: " + ("FAIL: " + "; ".join(found) if found else "pass"))
            problems += [f"{kind}: {p}" for p in found]
    except RoundTripError as err:
        problems.append(str(err))
    finally:
        studio.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    record["total_s"] = round(time.monotonic() - started, 1)
    record["result"] = "PASS" if not problems else "FAIL"
    if problems:
        record["problems"] = problems
    if args.record:
        Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    if problems:
        print("FAIL: " + " | ".join(problems))
        return 1
    print(
        f"PASS: points and region masks through Label Studio {record['versions'].get('label-studio', '?')} "
        f"equal the oracle at every queried pixel ({record['total_s']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
