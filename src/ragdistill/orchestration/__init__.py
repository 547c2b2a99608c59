"""Where Prefect keeps its state for this project, and the Prefect server the flows report to."""
