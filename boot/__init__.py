"""What runs at start-up, before the first capture: preflight checks (and, later, systemd notification)."""
