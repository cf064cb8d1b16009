"""The HTTP app through FastAPI's TestClient: good requests, every kind of bad one, metadata, health."""
import json

import pytest
from fastapi.testclient import TestClient

from t2arec.checkpoint import load_checkpoint
from t2arec.serve.app import ServeSettings, create_app
from t2arec.serve.recommender import state_digest
from tests.serve.helpers import split_histories

SETTINGS = ServeSettings(max_users=4, max_history=30, max_body_bytes=20_000, max_k=20)


@pytest.fixture(scope="module")
def client(recommender):
    with TestClient(create_app(recommender, SETTINGS)) as c:
        yield c


def body_for(recommender, data, users, **options):
    histories, now = split_histories(recommender, data, users)
    return {"users": [{"items": list(h.items[-25:]), "timestamps": list(h.timestamps[-25:]), "now": t}
                      for h, t in zip(histories, now)], **options}


def test_good_request_returns_the_recommenders_top_k_in_order(client, recommender, data):
    body = body_for(recommender, data, [3, 1, 2], k=7)
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    offline = recommender.recommend([(u["items"], u["timestamps"]) for u in body["users"]],
                                    [u["now"] for u in body["users"]], k=7)
    assert results == [r.to_dict() for r in offline]
    assert all(len(r["items"]) == 7 and isinstance(r["items"][0], int) for r in results)
    plain = client.post("/recommend", json={**body, "align": False}).json()["results"]
    assert plain == [r.to_dict() for r in recommender.recommend(
        [(u["items"], u["timestamps"]) for u in body["users"]], [u["now"] for u in body["users"]], k=7, align=False)]
    assert plain != results


def test_ids_in_either_spelling_unknown_ids_and_exclude_seen(client, recommender):
    ids = recommender.item_ids
    user = {"items": [ids[1], str(ids[2]), "unknown"], "timestamps": [0.0, 60.0, 120.0], "now": 500.0}
    got = client.post("/recommend", json={"users": [user], "k": 20, "exclude_seen": True}).json()["results"][0]
    assert got["skipped"] == 1 and not {ids[1], ids[2]} & set(got["items"])
    response = client.post("/recommend", json={"users": [user], "strict": True})
    assert response.status_code == 422 and response.json()["error"].startswith("users[0].items[2]: unknown item id")


def test_metadata_health_and_openapi(client, recommender, checkpoint):
    meta = client.get("/metadata").json()
    assert meta["model"] == "t2arec" and meta["num_items"] == recommender.num_items
    assert meta["item_sample"] == recommender.item_ids[1:101] and len(meta["item_sample"]) <= 100
    assert meta["config"]["align"]["lr"] == recommender.config.align.lr
    assert meta["limits"]["max_users"] == 4 and meta["time_unit"] == "seconds"
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["parameters_sha256"] == state_digest(load_checkpoint(checkpoint)["state_dict"])
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/health", "/metadata"} <= set(schema["paths"])


def good_user():
    return {"items": [1, 2, 3], "timestamps": [10.0, 20.0, 30.0], "now": 40.0}


def with_user(**changes):
    return {"users": [good_user(), {**good_user(), **changes}]}


BAD = [
    ("empty history", with_user(items=[], timestamps=[]), "users[1].items"),
    ("decreasing timestamps", with_user(timestamps=[10.0, 30.0, 20.0]), "users[1].timestamps[2]"),
    ("now before the last interaction", with_user(now=29.5), "users[1].now"),
    ("lengths differ", with_user(timestamps=[10.0, 20.0]), "users[1].timestamps"),
    ("timestamp as a string", with_user(timestamps=[10.0, "20", 30.0]), "users[1].timestamps[1]"),
    ("item id as a float", with_user(items=[1, 2.5, 3]), "users[1].items[1]"),
    ("item id as a bool", with_user(items=[1, True, 3]), "users[1].items[1]"),
    ("items not a list", with_user(items="123"), "users[1].items"),
    ("now missing", {"users": [good_user(), {"items": [1], "timestamps": [1.0]}]}, "users[1].now"),
    ("unknown field", with_user(when=5), "users[1].when"),
    ("k zero", {"users": [good_user()], "k": 0}, "k"),
    ("k above the limit", {"users": [good_user()], "k": 21}, "k"),
    ("k as a string", {"users": [good_user()], "k": "5"}, "k"),
    ("align not a bool", {"users": [good_user()], "align": "yes"}, "align"),
    ("no users", {"users": []}, "users"),
    ("users missing", {"k": 3}, "users"),
    ("too many users", {"users": [good_user()] * 5}, "users"),
    ("history too long", with_user(items=[1] * 31, timestamps=[1.0] * 31), "users[1].items"),
    ("timestamp out of range", with_user(timestamps=[10.0, 20.0, 3e12], now=4e12), "users[1].timestamps[2]"),
    ("all ids unknown", with_user(items=["a", "b", "c"]), "users[1].items"),
]


@pytest.mark.parametrize("name,body,field", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_422_naming_the_field_and_the_server_keeps_serving(client, name, body, field):
    response = client.post("/recommend", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"].startswith(f"{field}: "), payload
    assert payload["errors"][0]["field"] == field
    assert client.post("/recommend", json={"users": [good_user()]}).status_code == 200


RAW = [
    ("NaN", b'{"users": [{"items": [1], "timestamps": [NaN], "now": 5}]}', "users[0].timestamps[0]"),
    ("Infinity", b'{"users": [{"items": [1], "timestamps": [1], "now": Infinity}]}', "users[0].now"),
    ("overflow to inf", b'{"users": [{"items": [1], "timestamps": [1e999], "now": 5}]}', "users[0].timestamps[0]"),
    ("broken JSON", b'{"users": [', "body"),
    ("not an object", b"[1, 2]", "body"),
]


@pytest.mark.parametrize("name,raw,field", RAW, ids=[r[0] for r in RAW])
def test_non_finite_numbers_and_broken_json(client, name, raw, field):
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"{field}: ")


def test_oversized_bodies_get_413_before_parsing_with_or_without_content_length(client):
    big = json.dumps({"users": [good_user()], "padding": "x" * 30_000}).encode()
    response = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"].startswith("body: ")

    def chunks():
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert client.post("/recommend", json={"users": [good_user()]}).status_code == 200


def test_unknown_routes_and_methods_are_4xx(client):
    assert client.get("/nowhere").status_code == 404
    response = client.get("/recommend")
    assert response.status_code == 405 and response.json()["error"]
