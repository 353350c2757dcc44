"""A car-park system that speaks parking's gRPC contract, run as its own process."""
