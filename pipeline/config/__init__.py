"""The typed configuration, one module per params.yaml section: `data`, `model`, `lio`, `train`,
`export`, `engine`, `report`; `schema` builds and checks them; `params` holds `Config`, every section at once
(tests, the study).

A stage loads only the sections it reads (`schema.load(path, <Stage>Params)`), so the code
it imports, and so its DVC deps, hold no other section's checks: editing the report's
checks does not retrain.
"""
