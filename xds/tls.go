package xds

import (
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// upstreamTLS is a verifying client TLS socket: the server's chain must lead to a
// certificate in trustedCAFile (a path on Envoy's host) and the certificate must
// name host — as a DNS name, or as an IP address when host is one. A DNS host is
// also sent as SNI. client, when set, is the certificate Envoy presents (mTLS).
//
// Envoy verifies nothing without a validation context: an UpstreamTlsContext
// with only an SNI encrypts, but to whoever answers.
func upstreamTLS(host, trustedCAFile string, client *tlsv3.TlsCertificate) (*corev3.TransportSocket, error) {
	san := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}},
	}
	sni := host
	if _, err := netip.ParseAddr(host); err == nil {
		san.SanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
		sni = "" // SNI carries host names only (RFC 6066)
	}
	ctx := &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			// Envoy's upstream default stops at TLS 1.2.
			TlsParams: &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: trustedCAFile}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san},
			}},
		},
	}
	if client != nil {
		ctx.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{client}
	}
	a, err := anypb.New(ctx)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}
