"""A meta-training run writes TensorBoard event files beside metrics.jsonl holding the same
scalars at the same steps (read back from the record framing with the Event protobuf), and a
resumed start marks the steps it repeats for TensorBoard to purge."""
import glob
import os
import struct

import pytest

from learned_opt.files import read_jsonl
from meta_train.config import get_config
from meta_train.run import train

CFG = get_config("smoke").replace(outer_steps=8, checkpoint_every=3, eval_every=4, log_every=1)


def read_events(path):
    """Event protos of one event file: records framed as length (u64), its CRC, data, data CRC."""
    from tensorboardX.proto import event_pb2
    events = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        e = event_pb2.Event()
        e.ParseFromString(data[i + 12:i + 12 + n])
        events.append(e)
        i += 12 + n + 4
    assert i == len(data)
    return events


def scalars(run):
    """What TensorBoard shows: files in order of writing; a START session log at step s in a
    later file hides every earlier event at step >= s."""
    out, purges = {}, []
    for path in sorted(glob.glob(os.path.join(run, "events.out.tfevents.*")), key=os.path.getmtime):
        for e in read_events(path):
            if e.HasField("session_log") and e.session_log.status == e.session_log.START:
                purges.append(e.step)
                out = {k: v for k, v in out.items() if k[1] < e.step}
            for v in e.summary.value:
                out[(v.tag, e.step)] = v.simple_value
    return out, purges


def test_event_files_hold_the_metrics_scalars(tmp_path):
    run = str(tmp_path / "r")
    train(CFG, run, progress=False, stop_after=5)            # killed after 5; checkpoint at 3
    train(CFG, run, resume=True, progress=False)
    got, purges = scalars(run)
    records = read_jsonl(os.path.join(run, "metrics.jsonl"))
    want = {(k, r["step"]): v for r in records for k, v in r.items()
            if k != "step" and isinstance(v, (int, float))}
    assert {"meta_loss", "eval_mean_loss", "grad_norm"} <= {k for k, _ in want}
    assert set(got) == set(want)     # nothing missing (the checkpoint step's records), nothing stale
    for key, value in want.items():
        assert got[key] == pytest.approx(float(value), rel=1e-6, abs=1e-6), key   # float32 in the event
    assert purges[-1] == 4        # the resumed start (after step 3) purges steps >= 4 of the first


def test_no_tensorboard_writes_no_event_files(tmp_path):
    run = str(tmp_path / "r")
    train(CFG.replace(outer_steps=2), run, progress=False, tensorboard=False)
    assert not glob.glob(os.path.join(run, "events.out.tfevents.*"))


def test_a_resume_in_the_same_second_keeps_the_earlier_starts_events(tmp_path, monkeypatch):
    """tensorboardX names an event file by the second it was opened: two starts of one run within
    a second must still write two files, the first start's events intact."""
    import time
    from meta_train.run import _tensorboard
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)      # both starts in one second
    for start, steps in ((0, range(0, 4)), (3, range(4, 6))):
        tb = _tensorboard(str(tmp_path), start)
        for s in steps:
            tb.add_scalar("meta_loss", float(s), s)
        tb.close()
    monkeypatch.undo()
    got, purges = scalars(str(tmp_path))
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2
    assert sorted(s for tag, s in got if tag == "meta_loss") == [0, 1, 2, 3, 4, 5]
    assert purges == [0, 4]
