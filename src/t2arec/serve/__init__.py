"""Online recommendation: ``Recommender`` (raw ids in and out) and the HTTP app (``serve.app``)."""
from t2arec.serve.recommender import History, Recommendation, Recommender, RequestError

__all__ = ["History", "Recommendation", "Recommender", "RequestError"]
