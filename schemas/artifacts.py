"""File names shared by every job's output directory."""

# Written by every job, in this order, as its last two acts.
INFO_FILE = "info.json"
COMPLETED_FILE = "COMPLETED"

# Version of the on-disk layout; bumped when a file changes meaning.
LAYOUT_VERSION = 1
