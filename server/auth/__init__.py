"""Who may connect, subscribe and publish (issue 10), free of I/O except reading key files.

One module per job: `keys` (settings, key files, the pinned algorithm), `tokens` (a JWT → an
`Identity` or an `AuthError`), `permissions` (channel patterns), `ratelimit` (per-connection token
bucket), `origin` (the `Origin` allow-list), `tls` (server `SSLContext`s that reload), `apikey`
(the publish API's bearer key), `exposure` (loopback checks: the start-up warning and protected
mode), `expiry` (deadlines of many connections), `gate` (the decisions of the handshake and of the
session, which the worker wires to picows). See docs/auth.md.
"""

# Error codes of `err` replies (contract: clients switch on these strings).
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"

# WebSocket close code for every policy refusal (auth timeout, bad first token, expiry, abuse).
POLICY_VIOLATION = 1008
