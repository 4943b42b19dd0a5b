package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/climesh/climesh/config"
)

func headersWithUnderscoresRejected() *corev3.HttpProtocolOptions {
	return &corev3.HttpProtocolOptions{HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_REJECT_REQUEST}
}

// buildRouteConfig routes the tunnel path to the listener's pools, hashing on the
// pool's identity header; every other path gets a 404 that says where tunnels live.
func buildRouteConfig(l *config.Listener, cfg *config.Config) (*routev3.RouteConfiguration, error) {
	routes := make([]*routev3.Route, 0, len(l.Routes)+1)
	for _, r := range l.Routes {
		pool, _ := cfg.Pool(r.Pool) // config.Validate checked the reference
		match := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: l.Path}}
		if r.When != nil {
			match.Headers = []*routev3.HeaderMatcher{headerMatcher(r.When)}
		}
		action := &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: clusterName(pool.Name)},
			Timeout:          durationpb.New(0), // tunnels live as long as they are used
			IdleTimeout:      durationpb.New(l.IdleTimeout),
		}
		if pool.LB.Policy.Hashing() {
			action.HashPolicy = []*routev3.RouteAction_HashPolicy{{
				PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{
					HeaderName: cfg.Identity.HeaderFor(pool.LB.HashKey),
				}},
			}}
		}
		route := &routev3.Route{
			Name:   "pool/" + pool.Name,
			Match:  match,
			Action: &routev3.Route_Route{Route: action},
		}
		if cfg.Policy.On() {
			perRoute, err := extAuthzPerRoute(pool.Name)
			if err != nil {
				return nil, err
			}
			route.TypedPerFilterConfig = map[string]*anypb.Any{extAuthzFilterName: perRoute}
		}
		routes = append(routes, route)
	}
	routes = append(routes, &routev3.Route{
		Name:  "not-found",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 404,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "climesh: tunnels are served on " + l.Path + "\n"}},
		}},
	})
	return &routev3.RouteConfiguration{
		Name: routeConfigName(l.Name),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "climesh",
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}, nil
}

func headerMatcher(m *config.HeaderMatch) *routev3.HeaderMatcher {
	if m.Exact == "" {
		return &routev3.HeaderMatcher{Name: m.Header, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	return &routev3.HeaderMatcher{Name: m.Header, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.Exact}},
	}}
}
