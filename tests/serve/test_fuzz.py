"""Fuzz the API from its own OpenAPI schema (schemathesis, small budget): never a 5xx; and any
valid request (hypothesis) gets exactly the offline result."""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from t2arec.serve.app import ServeSettings, create_app


@pytest.fixture(scope="module")
def api_schema(recommender):
    app = create_app(recommender, ServeSettings(max_users=3, max_history=12, max_k=10, max_body_bytes=20_000))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_never_answers_with_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])


@pytest.fixture(scope="module")
def client(recommender):
    from fastapi.testclient import TestClient

    with TestClient(create_app(recommender, ServeSettings(max_users=3, max_history=30, max_k=20))) as c:
        yield c


@st.composite
def valid_requests(draw, ids, max_k):
    users = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 30))
        gaps = draw(st.lists(st.floats(0, 1e7, allow_nan=False), min_size=n, max_size=n))
        start = draw(st.floats(0, 1.7e9))
        times = [start + sum(gaps[:j + 1]) for j in range(n)]
        users.append({"items": draw(st.lists(st.sampled_from(ids), min_size=n, max_size=n)), "timestamps": times,
                      "now": times[-1] + draw(st.floats(0, 1e8))})
    return {"users": users, "k": draw(st.integers(1, max_k)), "align": draw(st.booleans()),
            "exclude_seen": draw(st.booleans())}


@given(data=st.data())
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_valid_request_gets_the_offline_result(client, recommender, data):
    ids = recommender.item_ids[1:] + [str(i) for i in recommender.item_ids[1:6]]  # both spellings
    body = data.draw(valid_requests(ids, 20))
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    users = body["users"]
    offline = recommender.recommend([(u["items"], u["timestamps"]) for u in users], [u["now"] for u in users],
                                    k=body["k"], align=body["align"], exclude_seen=body["exclude_seen"])
    assert response.json()["results"] == [r.to_dict() for r in offline]
