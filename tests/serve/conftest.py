"""A tiny trained checkpoint shared by the serving tests, and its data."""
import pytest
import torch

from t2arec.config import RunConfig, apply_overrides
from t2arec.pipeline import load_data, remap_items, run
from t2arec.serve import Recommender

# a fixed step (empty grid: used untested), so that the serving paths always align; a tiny run's
# validation choice would be "no step" (tests/serve/test_recommender.py covers such a checkpoint)
TINY = ["data.synthetic_users=80", "data.synthetic_items=50", "data.max_len=20", "train.epochs=1",
        "align.batch_size=64", "align.lr_grid=", "align.lr=1.0"]


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
