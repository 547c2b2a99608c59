"""What the Prefect server is told: the deployments (``specs``), their event trigger (``triggers``),
registering them (``register``) and the ``prefect.yaml`` generated from the same list
(``prefect_yaml``)."""
