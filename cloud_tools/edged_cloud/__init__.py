"""Cloud-side tools for edged (never installed on devices): the ``edged-cloud`` command
(edged_cloud.cli), the reference model's converter and the capture upload signer."""
