"""benchmarks/step_time.py on tiny data: one line per batch size, with a positive step time."""
import re
import sys

from t2arec.data.prepare import prepare
from t2arec.data.synthetic import make_synthetic

from tests.benchmark_scripts import load_benchmark


def test_a_line_per_batch_size(monkeypatch, capsys):
    script = load_benchmark("step_time")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(script, "ml1m", lambda path: tiny)
    monkeypatch.setattr(sys, "argv", ["step_time.py", "--sizes", "2,4", "--max-len", "10"])
    script.main()
    lines = re.findall(r"batch (\d+): ([0-9.]+) s per step", capsys.readouterr().out)
    assert [size for size, _ in lines] == ["2", "4"]
    assert all(float(seconds) > 0 for _, seconds in lines)
