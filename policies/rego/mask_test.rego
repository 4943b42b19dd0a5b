package system.log_test

import rego.v1

import data.system.log

test_edge_token_masked if {
	"/input/attributes/request/http/headers/authorization" in log.mask
}

test_provider_key_masked if {
	"/input/params/provider/apiKey" in log.mask
}
