"""The outer ring: what wires the layers into running programs. The CLI, the local stack and
its supervision, the web service (ingest API), the SQL endpoint and the store process that owns
the embedded engine, replay, the demo and the local Kafka broker. Nothing below imports it
(tests/unit/test_layers.py)."""
