"""dssidecar: a continuous-batching inference engine served over an OpenAI-compatible HTTP API.

The agent (`dsagent`) runs it as a sidecar process and talks to it only over HTTP.
"""

__version__ = "0.1.0"
