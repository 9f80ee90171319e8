"""What the router reports: Prometheus series, traces, GetStats figures, event-loop stalls, costs. Imports no other wing."""
