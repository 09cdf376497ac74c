"""LIO train-then-export pipeline: prepare -> train -> strip -> export -> engine -> report."""
