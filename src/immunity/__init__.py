"""immunity: canary deployments for server fleets with a cluster immune system."""

__version__ = "0.1.0"
