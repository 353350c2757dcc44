"""WeChat Pay API v3, the parts Mall Circle speaks: signing what the merchant sends,
verifying what the platform sends, and the AEAD_AES_256_GCM resource encryption.

Protocol only: no HTTP server, no business rules. The gateway (inbound notifications), the
points service (outbound points sync) and the WeChat Pay simulator all use these functions,
so there is one implementation of the platform's crypto in the codebase.
"""
