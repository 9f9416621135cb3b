"""Load generator for OpenAI-compatible servers: `dsagent bench URL`, and the measuring half of `dsagent tune`.

Why it lives in the agent: the tuner needs the same figures (TTFT, TPOT, ITL, end-to-end latency, goodput)
an operator gets from `dsagent bench`, computed one way, with vLLM bench's definitions and key names so the
numbers compare with `vllm bench serve` runs.
"""
