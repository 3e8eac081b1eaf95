"""The whole loop on one machine (``edged-cloud fleet-demo``) and the rollout at fleet scale
(benchmarks/fleet_rollout.py): a local AWS API server and mosquitto, started here."""
