"""The torch-free core every layer may use (an import-linter contract in pyproject.toml keeps torch
out): `errors`, `io` (atomic files), `paths` (every artifact's path), `metrics`, `timing`, `machine`
(the CPU and its threads), `markdown` (tables) and `arch` (the architecture constants)."""
