"""`python -m stages ...` is `lio ...`; torchrun uses it: `torchrun --nproc_per_node=8 -m stages train`."""

from stages.cli import main

main()
