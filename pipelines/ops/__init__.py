"""Tools above the stages: the local stack, the demo and its data, the in-process chain runner,
the Airflow REST client, the expectations drafter and the registry command.
"""
