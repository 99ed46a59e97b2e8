"""fraudops: the stages of a production batch ML system, one module each.

No Airflow import anywhere in this package; `python -m pipelines <stage>` is the one entry point.
"""
__version__ = "0.1.0"
