"""The command groups of ``edged-cloud`` (edged_cloud.cli.GROUPS), one module each."""
