"""The local jobs service: AWS IoT Jobs' rollouts for jobs created in moto, carried to
devices over the real MQTT topics (tests and the fleet demo only, never production)."""
