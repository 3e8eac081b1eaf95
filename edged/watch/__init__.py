"""Seeing what the daemon decides: the decision log (``log.decisions``), the in-process
event feed of decisions and alarms, and the local socket that serves the feed to
``edged watch`` (docs/watch.md)."""
