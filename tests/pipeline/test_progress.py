"""Progress output: plain lines every log_every steps for logs, a rich bar on terminals, nothing off rank 0."""

from __future__ import annotations

from pipeline.train.progress import Progress


def test_plain_lines_every_log_every_and_the_last(capsys):
    progress = Progress(7, log_every=3, plain=True)
    for step in range(1, 8):
        progress.update(step, loss=1.0 / step, lr=1e-3, tokens_per_s=1234.0)
    progress.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert "loss 0.3333" in lines[0] and "lr 1.00e-03" in lines[0] and "1,234 tok/s" in lines[0] and "ETA" in lines[0]


def test_rich_bar_and_disabled_ranks(capsys):
    bar = Progress(2, plain=False)
    bar.update(1, 0.5, 1e-3, 10.0)
    bar.log("hello from the bar")
    bar.update(2, 0.4, 1e-3, 10.0)
    bar.close()
    assert "hello from the bar" in capsys.readouterr().out
    silent = Progress(2, plain=True, enabled=False)
    silent.update(2, 0.1, 1e-3, 1.0)
    silent.log("nothing")
    assert capsys.readouterr().out == ""
