"""Model updates over AWS IoT Jobs: the device side of the contract.

``protocol`` holds the topics, requests, replies and limits; ``document`` the edged job
document and the REJECTED/FAILED mapping; ``peer`` a jobs service for tests. The executor
that acts on jobs is not built yet (docs/jobs.md).
"""
