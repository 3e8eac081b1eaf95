"""The operator's dashboard: the daemon's turbines, models, alarms and health over HTTP
(``dashboard:``; docs/dashboard.md)."""
