"""Exit codes of ``tuneplane-train``: the control plane maps each to a job outcome (see SPEC.md)."""

OK = 0
UNEXPECTED_ERROR = 1
BAD_INPUT = 2  # bad spec or bad data; the message names the field or the line
NON_FINITE_LOSS = 3  # NaN or inf loss
OUT_OF_MEMORY = 4
STOPPED = 75  # SIGTERM: a checkpoint was saved, then the trainer stopped (pause and cancel)
