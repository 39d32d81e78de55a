"""One module per DVC stage, each with one entry function `stage(params, args, layout)` that the CLI's table calls.
Stages ask a variant's backend (pipeline.backends.get(variant.backend)) for everything backend-specific."""
