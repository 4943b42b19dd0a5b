package xds

import (
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	headerstatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/header/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/protocol"
)

// httpFilter is one entry of the HTTP filter chain.
type httpFilter struct {
	name   string
	config proto.Message
}

// httpFilters is the edge's filter chain, in order. Listed here, explicitly:
//  1. strip every identity header a client sent, so that only later filters set them;
//  2. jwt_authn verifies the bearer token and sets the user and tenant headers;
//  3. ext_authz asks OPA, which adds the signed identity assertion;
//  4. stateful_session (identity.pin_header set) sends a reconnect back to its instance;
//  5. credential_injector (identity.edge_credential_file set) adds the edge
//     credential, from an SDS secret;
//  6. the router hashes on the headers 2 set.
func httpFilters(c *config.Config) []httpFilter {
	id := c.Identity
	var strip []string
	if !id.TrustClientHeaders {
		strip = id.Headers()
	}
	if id.EdgeCredential != "" {
		strip = append(strip, protocol.HeaderEdgeCredential) // only Envoy may set it
	}
	if c.Policy.On() {
		strip = append(strip, protocol.HeaderIdentity) // only ext_authz may set it
	}
	var chain []httpFilter
	if len(strip) > 0 {
		chain = append(chain, stripHeaders(strip))
	}
	if len(c.JWT.Providers) > 0 {
		chain = append(chain, jwtAuthn(c))
	}
	if c.Policy.On() {
		chain = append(chain, extAuthz(c))
	}
	if h := c.Identity.PinHeader; h != "" {
		chain = append(chain, statefulSession(h))
	}
	if id.EdgeCredential != "" {
		chain = append(chain, credentialInjector())
	}
	return append(chain, httpFilter{name: "envoy.filters.http.router", config: &routerv3.Router{}})
}

// statefulSession pins a tunnel's reconnects to its instance: Envoy names the
// instance it picked in header on the upgrade response, and routes a request that
// carries it back to that instance while the instance's health allows (the
// cluster's default override_host_status: healthy, degraded or unknown — never a
// draining or unhealthy one, so a drain still moves its users). Not strict: a
// stale or forged value falls back to the ring.
func statefulSession(header string) httpFilter {
	state, _ := anypb.New(&headerstatev3.HeaderBasedSessionState{Name: header})
	return httpFilter{
		name: "envoy.filters.http.stateful_session",
		config: &statefulsessionv3.StatefulSession{SessionState: &corev3.TypedExtensionConfig{
			Name: "envoy.http.stateful_session.header", TypedConfig: state,
		}},
	}
}

// stripHeaders removes headers a client must not be able to set.
func stripHeaders(names []string) httpFilter {
	removals := make([]*mutationv3.HeaderMutation, 0, len(names))
	for _, h := range names {
		removals = append(removals, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Remove{Remove: h}})
	}
	return httpFilter{
		name: "envoy.filters.http.header_mutation",
		config: &headermutationv3.HeaderMutation{
			Mutations: &headermutationv3.Mutations{RequestMutations: removals},
		},
	}
}

func (f httpFilter) build() (*hcmv3.HttpFilter, error) {
	a, err := anypb.New(f.config)
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: f.name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}
