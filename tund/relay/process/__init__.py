"""The worker process: ``main`` (entry point, one worker's life), ``build`` (spec -> pump),
``zygote`` (the fork server), ``privileges`` (the drop before the first packet)."""
