"""A tiny trained checkpoint shared by the serving tests, and its data."""
import pytest
import torch

from t2arec.config import RunConfig, apply_overrides
from t2arec.pipeline import load_data, remap_items, run
from t2arec.serve import Recommender

TINY = ["data.synthetic_users=80", "data.synthetic_items=50", "data.max_len=20", "train.epochs=1",
        "align.batch_size=64"]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    cfg = RunConfig()
    apply_overrides(cfg, TINY)
    out = tmp_path_factory.mktemp("tiny-run")
    run(cfg, out, progress=False)
    return out / "checkpoint"


@pytest.fixture(scope="session")
def recommender(checkpoint):
    return Recommender.load(checkpoint)


@pytest.fixture(scope="session")
def data(recommender):
    return remap_items(load_data(recommender.config), recommender.item_ids)
