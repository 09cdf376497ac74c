"""The typed configuration, one module per params.yaml section.

A stage loads only the sections it reads (`schema.load(path, <Stage>Params)`), so the code
it imports, and so its DVC deps, hold no other section's checks: editing the report's
checks does not retrain. `params.Config` is every section at once (tests, the study).
"""
