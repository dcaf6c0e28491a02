"""The two contracts between training and serving, each defined once and typed.

* ``artifact`` / ``manifest`` / ``versions``: what the training job publishes and the service loads (one
  version directory, its typed manifest, and the lifecycle of versions in a model directory).
* ``interaction_log``: what the service records and the nightly job consumes (the event, the Redis Stream and
  the SQLite table it lives in).

Training and the service import these and nothing of each other.
"""
