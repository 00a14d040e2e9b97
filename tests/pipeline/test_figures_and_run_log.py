"""The report's PNG figures are real, readable images; the TensorBoard event log reads back with its scalars."""

from __future__ import annotations

import datetime as dt
import io
import struct

import pytest

from pipeline.report import figures, run_log, stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _read_image(data: bytes):
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


def _figures() -> dict[str, bytes]:
    cal = stats.calibration([0.3, 0.55, 0.9, 0.95, 0.97], [False, True, True, True, False])
    conf = stats.confusion(list("ABCDA"), list("AACDA"))
    return {
        "loss": figures.loss_curve([2.0, 1.5, 1.2, 0.9, 0.8]),
        "loss_log": figures.loss_curve([5.0, 0.5, 0.05, 0.004]),  # falls by orders of magnitude: log axis
        "lr": figures.learning_rate_curve([0.0, 1e-4, 2e-4, 1e-4]),
        "throughput": figures.throughput_curve([900.0, 1100.0, 1000.0], first_step=2),
        "accuracy": figures.accuracy_curve(
            [{"step": 0, "value": 0.25, "low": 0.1, "high": 0.45}, {"step": 60, "value": 0.8, "low": 0.7, "high": 0.9}],
            chance=0.25),
        "reliability": figures.reliability_diagram(cal, "Reliability, after training"),
        "confusion": figures.confusion_heatmap(conf, "Predicted vs gold letter"),
    }


def test_every_figure_is_a_readable_png_of_a_sensible_size():
    for name, data in _figures().items():
        width, height = _png_size(data)
        assert 300 <= width <= 1200 and 250 <= height <= 900, (name, width, height)
        pixels = _read_image(data)
        assert pixels.shape[:2] == (height, width), name
        # Something was drawn: not one flat colour.
        assert float(pixels.std()) > 0.05, name


def test_figures_are_deterministic():
    assert figures.loss_curve([1.0, 0.5]) == figures.loss_curve([1.0, 0.5])


def test_figures_carry_titles_and_axis_labels(monkeypatch):
    # Inspect the drawn Figure objects: a figure readable at a glance has a title and both axis labels.
    drawn = []
    monkeypatch.setattr(figures, "_png", lambda fig: drawn.append(fig) or b"")
    _figures()
    assert len(drawn) == 7
    for fig in drawn:
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    units = " ".join(fig.axes[0].get_ylabel() for fig in drawn)
    assert "nats" in units and "tokens / s" in units and "fraction correct" in units


def test_event_log_reads_back_with_the_expected_scalars(tmp_path):
    training = {"steps": 3, "losses": [2.0, 1.5, 1.25], "lrs": [0.5, 0.25, 0.125], "step_tokens": [100, 300, 50],
                "step_seconds": [1.0, 2.0, 0.5]}
    scalars = run_log.training_scalars(training, [{"step": 0, "value": 0.25}, {"step": 3, "value": 0.75}])
    folder = run_log.write_event_log(tmp_path, scalars, run_log.step_walltimes(training, "2026-11-30T00:00:00+00:00"))
    files = list(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1 and not list(tmp_path.glob(".tensorboard-*"))  # the temporary folder is gone
    back = run_log.read_scalars(folder)
    assert back["train/loss"] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert back["train/learning_rate"] == [(1, 0.5), (2, 0.25), (3, 0.125)]  # exact in float32
    assert back["train/tokens_per_second"] == [(1, 100.0), (2, 150.0), (3, 100.0)]
    assert back["eval/accuracy"] == [(0, 0.25), (3, 0.75)]


def test_event_log_walltimes_are_start_plus_step_durations(tmp_path):
    from tensorboardX.proto.event_pb2 import Event

    training = {"losses": [1.0, 0.5], "step_seconds": [1.5, 2.5]}
    walltimes = run_log.step_walltimes(training, "2026-11-30T00:00:00+00:00")
    start = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc).timestamp()
    assert walltimes == {1: start + 1.5, 2: start + 4.0}
    folder = run_log.write_event_log(tmp_path, run_log.training_scalars(training), walltimes)
    data = next(folder.glob("events.out.tfevents.*")).read_bytes()
    times, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = Event.FromString(data[offset + 12:offset + 12 + length])
        if event.summary.value:
            times.append(event.wall_time)
        offset += 16 + length
    assert times == [start + 1.5, start + 4.0]


def test_a_corrupted_event_log_is_refused(tmp_path):
    folder = run_log.write_event_log(tmp_path, {"train/loss": [(1, 1.0), (2, 0.5)]})
    path = next(folder.glob("events.out.tfevents.*"))
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the last record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        run_log.read_scalars(path)
    path.write_bytes(bytes(data[:-3]))
    with pytest.raises(ValueError, match="cut short"):
        run_log.read_scalars(path)


def test_throughput_of_a_run_resumed_from_an_older_checkpoint_aligns_at_the_end():
    # Durations recorded only for the last two of four steps: they are steps 3 and 4.
    training = {"steps": 4, "losses": [1, 1, 1, 1], "step_tokens": [10, 20, 30, 40], "step_seconds": [3.0, 4.0]}
    assert run_log.tokens_per_second(training) == {3: 10.0, 4: 10.0}
    assert run_log.step_walltimes(training, "2026-11-30T00:00:00+00:00") == {}  # incomplete: no invented times
