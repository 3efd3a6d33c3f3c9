"""The Policy Decision Point of PROFILE.md section 12 (Level 4): action classification, the
policy compiler (Mission -> Cedar artifact), the decision, metering, permits, evidence, the
AuthZEN Authorization API 1.0 and resource-policy tenants."""
