"""benchmarks/step_time.py on tiny data: one line per batch size, with a positive step time."""
import re
import sys

import pytest
import torch

from t2arec.config import ConfigError
from t2arec.data.prepare import prepare
from t2arec.data.synthetic import make_synthetic
from t2arec.models import build_model

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


def test_starts_from_a_saved_training_state(monkeypatch, capsys, tmp_path):
    script = load_benchmark("step_time")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(script, "ml1m", lambda path: tiny)
    model, cfg = script.make_model("t2arec", tiny, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "state.pt")
    monkeypatch.setattr(sys, "argv", ["step_time.py", "--sizes", "2", "--max-len", "10",
                                      "--state", str(tmp_path / "state.pt"), "--keep-denormals"])
    script.main()
    assert re.search(r"batch 2: [0-9.]+ s per step", capsys.readouterr().out)
    # the state is really loaded: one made for another catalogue does not fit the model
    other = build_model(cfg, tiny.num_items + 5)
    torch.save({"model": other.state_dict(), "optimizer": {}}, tmp_path / "other.pt")
    monkeypatch.setattr(sys, "argv", ["step_time.py", "--sizes", "2", "--max-len", "10", "--state", str(tmp_path / "other.pt")])
    with pytest.raises(RuntimeError, match="size mismatch"):
        script.main()


def test_overrides_reach_the_model_and_the_profile_is_printed(monkeypatch, capsys):
    script = load_benchmark("step_time")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(script, "ml1m", lambda path: tiny)
    built = []
    make_model = script.make_model
    monkeypatch.setattr(script, "make_model", lambda *a: built.append(make_model(*a)) or built[-1])
    monkeypatch.setattr(sys, "argv", ["step_time.py", "--model", "tim4rec", "--sizes", "2", "--max-len", "10",
                                      "--set", "model.chunk_size=4", "--profile", "5"])
    script.main()
    model, cfg = built[0]
    assert cfg.model.chunk_size == 4 and model.cfg.chunk_size == 4  # the timed model is the overridden one
    out = capsys.readouterr().out
    assert re.search(r"batch 2: [0-9.]+ s per step", out)
    assert "Self CPU" in out  # the profiler's table
    with pytest.raises(ConfigError, match="model.no_such"):  # an override of no field is refused, not ignored
        monkeypatch.setattr(sys, "argv", ["step_time.py", "--sizes", "2", "--max-len", "10", "--set", "model.no_such=1"])
        script.main()
