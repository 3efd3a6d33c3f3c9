"""Enforcement points: the parts a Resource Server, a gateway or a tool runner runs.

They verify what the Authorization Server issued and learn what it decided, with the wire
primitives of :mod:`missionbound.protocol` and the Mission vocabulary of
:mod:`missionbound.mission`, never by importing the issuer or the store (DESIGN.md, rules of
the house): a Resource Server must not need the AS's code or database.

- :mod:`missionbound.enforce.signals`: the Shared Signals receiver (RFC 8935 push, RFC 8936
  poll) that keeps a :class:`~missionbound.enforce.signals.MissionStateBook` of Mission
  lifecycle states, applied by version and never regressing.
"""
