"""Telemetry sources of the agent: GPU (NVML or fakes), host (psutil), engine scrape, OTLP receiver.

Import the submodules directly; this package imports nothing heavy so that `dsagent.sources.base`
works without pydantic, psutil or pynvml being importable (the GPU trace recorder runs on bare machines).
"""
