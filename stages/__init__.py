"""DVC-facing stage commands: thin click glue over `pipeline`, one module per stage."""
