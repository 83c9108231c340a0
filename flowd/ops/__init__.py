"""Running flowd as a service: health and metrics endpoint, systemd notify, signals."""
