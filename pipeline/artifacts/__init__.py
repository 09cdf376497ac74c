"""The files one stage writes and another reads, as frozen dataclasses with their own load/save
(`base`), one module per file so that a stage's DVC deps hold only the formats it touches:
`training` (dvclive's summary), `deployable` (the stripped model's metadata), `export`, `runtime`
(the CPU runtime's choice and the served load), `engine`, `scores`, `extent`, `study`.

The writer builds the dataclass, every reader loads it: no stage digs in another's dicts. Like
timm's `PretrainedCfg`, the deployable's metadata carries its preprocessing, its labels and the
settings it was trained with.
"""
