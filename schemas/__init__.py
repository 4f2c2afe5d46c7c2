"""Every feature spec, schema and artifact name of embedflow, declared once.

Jobs import these names; none re-declares them. A change here is a change of the
on-disk contract between jobs.
"""
