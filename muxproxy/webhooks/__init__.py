"""The ``callback_url`` webhook relay: an outbox in the store, delivered by a
background loop with retries, optional Standard Webhooks signing and SSRF guards.

Modules: ``outbox`` (the records), ``payload`` (the body), ``schedule`` (retry
policy), ``signing``, ``ssrf``, ``sender`` (one HTTP attempt), ``relay`` (the loop).
"""
