"""File names shared by every job's output directory."""

# Written by every job, in this order, as its last two acts.
INFO_FILE = "info.json"
COMPLETED_FILE = "COMPLETED"

# Version of the on-disk layout; bumped when a file changes meaning.
LAYOUT_VERSION = 1

# Inside a job's staging directory (<output>.partial-<id>) while it runs: the host, pid
# and start time of the process writing it, so a later run can prove it stale. Removed
# before the staging directory is published.
STAGING_OWNER_FILE = ".embedflow-staging.json"
