"""``edged agent``: a wire-compatible replacement for the SageMaker Edge Agent's gRPC API."""
