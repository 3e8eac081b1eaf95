"""The MQTT link that the mqtt plugin, the cloud link and the heartbeat share."""
