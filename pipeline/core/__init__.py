"""The torch-free core every layer may use: errors, atomic files, artifact paths,
metrics, timing, Markdown tables and the architecture constants (an import-linter contract in
pyproject.toml keeps torch out)."""
