"""The Kedro glue: one package per stage (``<stage>/nodes.py`` + ``pipeline.py``) and ``shared.py``,
the nodes several stages use. Registered by ``llama2_pipeline.pipeline_registry``."""
