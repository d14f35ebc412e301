"""The long-running processes of the pipeline: threads, loops and operations around the steps of `pipeline.stream`.

    run_pipeline(load_config("configs/local.yaml"))               # every stage in one process (clipwatch run)
    run_worker("classifier", load_config("configs/redis.yaml"))   # one worker per process (clipwatch worker)

`loop` runs a stage against a bus (receive → step → publish → ack), `stages` adapts each step of
`pipeline.stream.steps` to it, `decoder` reads the sources in threads, `ops` serves metrics and health, `launch`
starts it all. Nothing in `pipeline` imports this package.
"""
