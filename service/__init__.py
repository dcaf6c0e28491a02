"""Recommendation service (FastAPI + FAISS + Redis): built on the artifacts of ``training``."""
