"""Kibana saved objects for the agent's data streams: data views, four dashboards of Lens panels, and the
client that imports them (`dsagent dashboards install`) and exports them back (`dsagent dashboards export`).

The dashboards are built from Python (`catalog.py`) on the field names the agent's index templates
declare, so a test can prove every panel reads a field that exists; `dashboards/dsagent.ndjson` at the
top of the repository is the same objects written in a stable form, for operators who import by hand.
"""
