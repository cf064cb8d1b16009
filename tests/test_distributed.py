"""Two processes on loopback (gloo) against one: the same training loss per epoch, the same evaluation
ranks with test-time alignment, and files written by rank 0 alone.

Both runs happen in spawned worker processes with one thread each, so that the only difference
between them is the number of processes.
"""
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from t2arec import distributed
from t2arec.align import AlignConfig
from t2arec.config import RunConfig, apply_overrides
from t2arec.data.batching import evaluation_examples, training_windows
from t2arec.evaluate import evaluate
from t2arec.models import build_model
from t2arec.pipeline import load_data, run

USERS, MAX_LEN = 150, 50  # windows of very different lengths: per-rank normalisation would show


def run_config(batch_size: int) -> RunConfig:
    cfg = RunConfig()
    apply_overrides(cfg, [f"data.synthetic_users={USERS}", f"data.max_len={MAX_LEN}", "model.dropout=0",
                          "train.epochs=3", f"train.batch_size={batch_size}", "train.eval_steps=1",
                          # a validation after every step, between the ranks' synchronised steps
                          "train.validate_within_epochs=true", "align.lr_grid=0.5,5"])
    return cfg


def batch_size_leaving_one_window() -> int:
    """A batch size whose last batch holds a single window, so that one of two ranks gets none."""
    cfg = run_config(1)
    data = load_data(cfg)
    count = len(training_windows(data, MAX_LEN, cfg.train.window_stride(MAX_LEN)))
    return next(size for size in range(16, count) if count % size == 1)


def sharded_evaluation(out: Path) -> None:
    """T2ARec's validation ranks with an alignment step, in batches of 8 (an uneven number of them)."""
    cfg = run_config(32)
    data = load_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items)
    result = evaluate(model, evaluation_examples(data, "valid", MAX_LEN), AlignConfig(lr=5.0), batch_size=8)
    plain = evaluate(model, evaluation_examples(data, "valid", MAX_LEN), None, batch_size=8)
    if distributed.rank() == 0:
        torch.save({"ranks": result.ranks, "shifts": result.param_shift, "plain": plain.ranks}, out / "eval.pt")


def record_replacements(log: list[str]) -> None:
    """Every file the library writes goes through os.replace (checkpoint.atomic_write): note them."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):  # noqa: ANN001
        log.append(Path(dst).name)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def worker(rank: int, world: int, port: int, out: str, batch_size: int) -> None:
    torch.set_num_threads(1)
    out_path = Path(out)
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    written: list[str] = []
    with distributed.process_group("cpu"):
        assert distributed.world_size() == world
        sharded_evaluation(out_path)
        record_replacements(written)
        results = run(run_config(batch_size), out_path / "run", progress=False)
    (out_path / f"written_by_rank{rank}.json").write_text(json.dumps(written))
    (out_path / f"history_rank{rank}.json").write_text(json.dumps(results["history"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{processes: output folder} for one and two processes."""
    batch_size = batch_size_leaving_one_window()
    folders = {}
    for world in (1, 2):
        folders[world] = tmp_path_factory.mktemp(f"world{world}")
        mp.spawn(worker, args=(world, free_port(), str(folders[world]), batch_size), nprocs=world, join=True)
    return folders


def losses_per_epoch(folder: Path, rank: int = 0) -> dict[str, np.ndarray]:
    history = json.loads((folder / f"history_rank{rank}.json").read_text())
    names = [k for k in history[0] if k.startswith("loss_")]
    return {name: np.array([row[name] for row in history]) for name in names}


def test_two_processes_train_with_the_loss_of_one(runs):
    one, two = losses_per_epoch(runs[1]), losses_per_epoch(runs[2])
    assert set(one) == {"loss_rec", "loss_time", "loss_state", "loss_total"} == set(two)
    assert len(one["loss_total"]) == 3
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-4, err_msg=name)
    assert np.all(np.diff(one["loss_rec"]) < 0)  # it trained: the comparison is not of three start values
    # every rank reports the global batch's losses, not its own slice's
    on_rank1 = losses_per_epoch(runs[2], rank=1)
    assert all(np.array_equal(on_rank1[name], two[name]) for name in two)


def test_two_processes_validate_inside_epochs_as_one_does(runs):
    def validations(folder, rank=0):
        history = json.loads((folder / f"history_rank{rank}.json").read_text())
        return [(v["step"], v["ndcg@10"]) for row in history for v in row["validations"]]

    one = validations(runs[1])
    assert [step for step, _ in one] == list(range(1, len(one) + 1)) and len(one) > 3
    for got in (validations(runs[2]), validations(runs[2], rank=1)):
        assert [step for step, _ in got] == [step for step, _ in one]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in one], rtol=0, atol=1e-6)


def test_sharded_evaluation_gives_the_ranks_of_one_process(runs):
    one, two = torch.load(runs[1] / "eval.pt", weights_only=False), torch.load(runs[2] / "eval.pt", weights_only=False)
    assert len(one["shifts"]) == 19  # 148 users in batches of 8: rank 0 evaluates 10 of them, rank 1 nine
    assert np.array_equal(two["ranks"], one["ranks"])
    assert two["shifts"] == one["shifts"]
    assert not np.array_equal(one["ranks"], one["plain"])  # the alignment step did change the ranks


def test_only_rank_0_writes_files(runs):
    assert json.loads((runs[2] / "written_by_rank1.json").read_text()) == []
    by_rank0 = set(json.loads((runs[2] / "written_by_rank0.json").read_text()))
    assert by_rank0 == {"train_state.pt", "checkpoint", "results.json"}
    assert sorted(p.name for p in (runs[2] / "run").iterdir()) == ["checkpoint", "results.json"]
