"""embedflow: word embeddings at scale, and the jobs that put them to work."""

__version__ = "0.1.0"
