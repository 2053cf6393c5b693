"""Running as a service: signals and systemd, the HTTP endpoint, health, metrics, logs, failpoints."""
