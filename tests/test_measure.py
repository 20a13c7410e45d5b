"""Memory measured at run time (minilora.course.measure): the peak RSS of a block, and its fallbacks."""
import pytest
import torch
from torch import nn

import minilora.course.measure as mem
from minilora.course.measure import PeakRSS, measure_peak_rss


def test_measure_peak_rss_side_by_side():
    deltas = []
    for _ in range(2):  # one block after the other, as in a notebook comparing two runs
        with measure_peak_rss() as m:
            x = torch.ones(50_000_000)  # 200 MB, touched
            del x
        assert isinstance(m, PeakRSS) and m.samples >= 1
        deltas.append(m.delta)
    assert all(d >= 180e6 for d in deltas), deltas
    with measure_peak_rss() as idle:
        nn.Linear(10, 10)
    assert idle.delta < 100e6
    assert "MB" in str(idle)


def test_measure_peak_rss_fallbacks(monkeypatch):
    real_exists = mem.os.path.exists
    monkeypatch.setattr(mem.os.path, "exists", lambda p: False if p == "/proc/self/statm" else real_exists(p))
    pytest.importorskip("psutil")
    with measure_peak_rss() as m:
        x = torch.ones(50_000_000)
    assert m.method == "psutil" and m.delta >= 180e6
    del x
    monkeypatch.setattr(mem, "_rss_reader", lambda: (None, None, "ru_maxrss"))
    with measure_peak_rss() as m:
        pass
    assert m.method == "ru_maxrss" and "lower bound" in m.note and m.delta >= 0 and "lower bound" in str(m)
