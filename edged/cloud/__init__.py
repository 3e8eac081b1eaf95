"""The device as an AWS IoT thing: the link, IoT Jobs, heartbeats, cloud alarms, capture
requests and upload URLs, the data budget."""
