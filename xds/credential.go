package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	credentialinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	genericcredentialv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/climesh/climesh/protocol"
)

// edgeCredentialSecret names the SDS secret that holds identity.edge_credential_file.
const edgeCredentialSecret = "climesh/edge-credential"

// Redacted replaces a secret's value, as Envoy's own config_dump does.
const Redacted = "[redacted]"

// edgeCredential is the secret Envoy adds to every tunnel it forwards. It travels
// as an SDS resource, apart from listeners and routes, so that the config anyone
// may read (route and listener dumps, golden files, /debug/xds) never holds it.
func edgeCredential(cred string) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: edgeCredentialSecret,
		Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: cred}},
		}},
	}
}

// credentialInjector sets x-climesh-edge-credential from the SDS secret. It runs
// after ext_authz (the policy server is sent every request header, and has no
// need of this one) and after the strip filter removed any copy a client sent;
// overwrite covers a copy that got past it all the same. Without the secret (not
// delivered yet) the request is refused (401), never forwarded bare.
func credentialInjector() httpFilter {
	generic, _ := anypb.New(&genericcredentialv3.Generic{
		Credential: &tlsv3.SdsSecretConfig{Name: edgeCredentialSecret, SdsConfig: adsSource()},
		Header:     protocol.HeaderEdgeCredential,
	})
	return httpFilter{
		name: "envoy.filters.http.credential_injector",
		config: &credentialinjectorv3.CredentialInjector{
			Overwrite: true,
			Credential: &corev3.TypedExtensionConfig{
				Name: "envoy.http.injected_credentials.generic", TypedConfig: generic,
			},
		},
	}
}

// RedactSecret returns a copy of s whose values are replaced by Redacted: for
// views meant to be read (/debug/xds, golden files).
func RedactSecret(s *tlsv3.Secret) *tlsv3.Secret {
	out := proto.Clone(s).(*tlsv3.Secret)
	redacted := &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: Redacted}}
	switch t := out.Type.(type) {
	case *tlsv3.Secret_GenericSecret:
		t.GenericSecret = &tlsv3.GenericSecret{Secret: redacted}
	case *tlsv3.Secret_TlsCertificate:
		if t.TlsCertificate.GetPrivateKey() != nil {
			t.TlsCertificate.PrivateKey = redacted
		}
	}
	return out
}
