class PipelineError(Exception):
    """A failure the user can act on. The CLI prints its message as one line and exits non-zero."""
