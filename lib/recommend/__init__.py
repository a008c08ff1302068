"""Recommendations: the models (EASE, item-kNN, ALS, popularity), live re-ranking, session
neighbourhoods, offline evaluation and the model store."""
