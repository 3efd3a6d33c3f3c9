"""Wire primitives shared by the Authorization Server and every enforcement point.

Pure: nothing here touches the store, the network or a framework, and nothing imports the
issuer (DESIGN.md, rules of the house), so a Resource Server checks a DPoP proof with the same
code the issuer uses. One module per specification: :mod:`missionbound.protocol.dpop` is
RFC 9449, :mod:`missionbound.protocol.secevent` RFC 8417 (SETs, as a recipient) and
:mod:`missionbound.protocol.jwks` RFC 7517 key sets; the last is the one exception to "no
network": its ``JwksCache`` fetches an issuer's ``jwks_uri`` with httpx.
"""
