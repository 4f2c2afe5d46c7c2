"""Beam plumbing shared by the Beam jobs: pipeline options, counters, progress lines."""

import logging
import time

from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  SetupOptions, StandardOptions)


def pipeline_options(beam_args, job_name):
    """PipelineOptions from Beam's flags, with embedflow's defaults.

    Args:
      beam_args: the flags the job's own parser did not know.
      job_name: appended to a Dataflow `--job_name`, so the passes of one job differ.
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        # Name the in-process runner: the default DirectRunner first tries to fetch
        # the Prism binary. --direct_running_mode/--direct_num_workers still apply.
        standard.runner = "FnApiRunner"
    options.view_as(SetupOptions).save_main_session = False
    gcp = options.view_as(GoogleCloudOptions)
    if job_name and gcp.job_name:
        gcp.job_name = f"{gcp.job_name}-{job_name}"
    return options


def counter_totals(result, namespace):
    """Totals of the Beam counters in `namespace` of a finished pipeline."""
    totals = {}
    for c in result.metrics().query()["counters"]:
        if c.key.metric.namespace == namespace:
            value = c.committed if c.committed is not None else c.attempted
            totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (value or 0)
    return totals


class Progress:
    """Logs a throughput line at most every `every` seconds (per worker)."""

    def __init__(self, what, every=30.0):
        self.what, self.every = what, every
        self.count, self.start, self.last = 0, time.time(), time.time()

    def add(self, n):
        self.count += n
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            logging.info("%s: %d so far, %.0f/s", self.what, self.count,
                         self.count / max(now - self.start, 1e-9))
