# What of a decision must not reach the decision log (OPA's mask rule, applied
# by the xds-server and the sidecars before an event leaves the process). Each
# string is a JSON pointer into {"input": ..., "result": ...} that is erased.
package system.log

import rego.v1

# Edge decisions: the bearer token as the client sent it, and Envoy's copy of
# the verified payload (input.jwt_payload and input.identity stay: who decided
# what is the point of the log).
mask contains "/input/attributes/request/http/headers/authorization"

mask contains "/input/attributes/metadataContext"

# Per-message decisions: a provider's credentials in session.create and
# session.resume.
mask contains "/input/params/provider/apiKey"

mask contains "/input/params/provider/bearerToken"
