"""``pgcrdr drill switchover|failover PAIR``: rehearse a pair's moves under a write load, on a
fork of the pair (default) or on the pair itself, and keep a report with the pair.

- :mod:`plan`: what a drill does and what it refuses (pure);
- :mod:`report`: the report, its figures taken from the operations' records, and its text,
  Markdown and JSON forms (pure);
- :mod:`load`: the acknowledged-writes logger run through the Service URI;
- :mod:`api`: the control plane's REST API as the drill uses it;
- :mod:`runner`: runs a drill step by step and cleans up after it.
"""
