"""The files one stage writes and another reads, as frozen dataclasses with their own load/save
(`base`), one module per file so that a stage's DVC deps hold only the formats it touches:
`training` (dvclive's summary), `deployable` (the stripped model's metadata), `parity` (the strip's
proof), `export`, `runtime` (the CPU runtime's choice and the served load), `engine`, `triton` (the
repository's client guide), `scores`, `extent` (a typed row per LIO stage), `study`.

The writer builds the dataclass, every reader loads it: no stage digs in another's dicts. Like
timm's `PretrainedCfg`, the deployable's metadata carries its preprocessing, its labels and the
settings it was trained with.
"""
