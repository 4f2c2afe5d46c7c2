"""One module per job: parse flags -> build -> run -> publish. Imports core, pipelines, trainer, schemas."""
