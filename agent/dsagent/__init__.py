"""dsagent: per-node monitoring and operations agent for LLM inference.

Importing this package must never import torch: the agent talks to the engine over HTTP only.
"""

__version__ = "0.1.0"
