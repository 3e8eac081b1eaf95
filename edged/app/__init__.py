"""The application: the assembly of a daemon from a config, the command line and the demo."""
