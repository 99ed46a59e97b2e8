"""The shared core below the stages: config, storage, lineage, data-quality and model helpers.

Nothing here imports a stage module (pipelines/<stage>.py) or a tool (pipelines/ops/).
"""
