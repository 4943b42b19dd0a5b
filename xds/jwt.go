package xds

import (
	"fmt"
	"net/url"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtauthnv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/climesh/climesh/config"
)

// jwtPayloadKey is where jwt_authn puts the verified payload in dynamic metadata,
// under its filter name, for ext_authz to pass on.
const (
	jwtFilterName = "envoy.filters.http.jwt_authn"
	jwtPayloadKey = "jwt_payload"
)

func jwksClusterName(provider string) string { return "jwks/" + provider }

// jwtAuthn verifies a bearer token from any configured provider and turns the
// user and tenant claims into the headers routes hash on. A request without a
// valid token is refused here (401), before ext_authz.
func jwtAuthn(c *config.Config) httpFilter {
	providers := map[string]*jwtauthnv3.JwtProvider{}
	var any []*jwtauthnv3.JwtRequirement
	for _, p := range c.JWT.Providers {
		jp := &jwtauthnv3.JwtProvider{
			Issuer:            p.Issuer,
			Audiences:         p.Audiences,
			RequireExpiration: true,
			PayloadInMetadata: jwtPayloadKey,
			ClaimToHeaders: []*jwtauthnv3.JwtClaimToHeader{
				{HeaderName: c.Identity.UserHeader, ClaimName: c.JWT.UserClaim},
				{HeaderName: c.Identity.TenantHeader, ClaimName: c.JWT.TenantClaim},
			},
			// Claims set the headers routes match and hash on: pick the route again.
			ClearRouteCache: true,
		}
		if p.RemoteJWKS != nil {
			jp.JwksSourceSpecifier = &jwtauthnv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtauthnv3.RemoteJwks{
				HttpUri: &corev3.HttpUri{
					Uri:              p.RemoteJWKS.URI,
					HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: jwksClusterName(p.Name)},
					Timeout:          durationpb.New(p.RemoteJWKS.Timeout),
				},
				CacheDuration: durationpb.New(p.RemoteJWKS.CacheDuration),
			}}
		} else {
			jp.JwksSourceSpecifier = &jwtauthnv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: p.LocalJWKS},
			}}
		}
		providers[p.Name] = jp
		any = append(any, &jwtauthnv3.JwtRequirement{RequiresType: &jwtauthnv3.JwtRequirement_ProviderName{ProviderName: p.Name}})
	}
	req := any[0]
	if len(any) > 1 {
		req = &jwtauthnv3.JwtRequirement{RequiresType: &jwtauthnv3.JwtRequirement_RequiresAny{
			RequiresAny: &jwtauthnv3.JwtRequirementOrList{Requirements: any},
		}}
	}
	return httpFilter{name: jwtFilterName, config: &jwtauthnv3.JwtAuthentication{
		Providers: providers,
		Rules: []*jwtauthnv3.RequirementRule{{
			Match:           &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtauthnv3.RequirementRule_Requires{Requires: req},
		}},
	}}
}

// jwksCluster lets Envoy fetch a remote JWKS: over https, from a server whose
// certificate Envoy verifies (upstreamTLS).
func jwksCluster(p config.JWTProvider) (*clusterv3.Cluster, error) {
	u, err := url.Parse(p.RemoteJWKS.URI)
	if err != nil {
		return nil, err
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	portNum := 0
	fmt.Sscan(port, &portNum)
	c := &clusterv3.Cluster{
		Name:                 jwksClusterName(p.Name),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		// Envoy's AUTO takes the IPv6 address when a name has one, even where
		// nothing listens on it (localhost's ::1); IPv4 first, IPv6 when there is no other.
		DnsLookupFamily: clusterv3.Cluster_V4_PREFERRED,
		ConnectTimeout:  durationpb.New(p.RemoteJWKS.Timeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: jwksClusterName(p.Name),
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(u.Hostname(), portNum),
				}},
			}}}},
		},
	}
	if u.Scheme == "https" {
		// config allows plain http on loopback only.
		if c.TransportSocket, err = upstreamTLS(u.Hostname(), p.RemoteJWKS.TrustedCAFile, nil); err != nil {
			return nil, err
		}
	}
	return c, nil
}
