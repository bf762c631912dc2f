"""Tune's TensorBoard files carry step = round (round 0: the source-only model)."""

import struct

from tensorboardX.proto import event_pb2

from orchestrator.tracking.tensorboard import RoundTensorBoard


class FakeTrial:
    def __init__(self, path):
        self.local_path, self.evaluated_params = str(path), {}

    def init_local_path(self):
        pass


def _scalars(folder):
    """(tag, step, value) of every scalar in the event files under ``folder`` (TFRecord framing)."""
    out = []
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_tensorboard_steps_are_rounds(tmp_path):
    callback = RoundTensorBoard()
    trial = FakeTrial(tmp_path)
    for report, (round_index, miou) in enumerate([(0, 0.2), (1, 0.3), (2, 0.4)], start=1):
        callback.log_trial_result(
            report,
            trial,
            {"round": round_index, "target/miou": miou, "training_iteration": report, "timesteps_total": None},
        )
    callback.log_trial_end(trial)
    miou = sorted((step, round(value, 3)) for tag, step, value in _scalars(tmp_path) if tag.endswith("target/miou"))
    assert miou == [(0, 0.2), (1, 0.3), (2, 0.4)]
