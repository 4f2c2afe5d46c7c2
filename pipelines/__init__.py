"""Beam pipelines of embedflow: one module per job."""
