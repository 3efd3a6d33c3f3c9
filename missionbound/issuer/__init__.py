"""The Authorization Server (DESIGN.md "The house"): one module per protocol surface, named
after it (``keys`` is the AS's signing keys and their JWKS, RFC 7517)."""
