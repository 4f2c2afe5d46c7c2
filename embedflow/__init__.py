"""embedflow: word embeddings at scale, and the jobs that put them to work."""

from core import __version__  # noqa: F401  (one version, declared in core)
