"""Serving on a CPU: the runtimes the deployed model runs on (`runtimes`), the registry of CPU
candidates (`candidates`), the choice among them, gated by the export's judge and timed on this
machine (`choose`), the model repositories (`triton` for NGC's container, `repository` for the bundled
server) and a real Triton server on the bundled binary (`server`, watched by `supervise`, with the
Python-backend models in `triton_models/`)."""
