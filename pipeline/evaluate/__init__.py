"""Evaluation of what ships and what LIO learned: the report (`report`) from accuracy (`metrics`),
latency (`timing`), object extent (`localisation`) and its figure (`figures`)."""
