"""The job as data: the job file's schema and fields, presets and tuning, file name
patterns and per-frame seeds. Reading a job imports neither torch nor PyAV, so
checking one is cheap."""
