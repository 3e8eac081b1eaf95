"""The health report and its local Prometheus endpoint."""
