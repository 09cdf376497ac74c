"""The files one stage writes and another reads, as frozen dataclasses with their own load/save
(base.py), one module per file so that a stage's DVC deps hold only the formats it touches.

The writer builds the dataclass, every reader loads it: no stage digs in another's dicts. Like
timm's `PretrainedCfg`, the deployable's metadata carries its preprocessing, its labels and the
settings it was trained with.
"""
