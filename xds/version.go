package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"

	"google.golang.org/protobuf/proto"
)

// Versions are per-type content hashes: an unchanged type keeps its version, so
// Envoy is sent nothing for it.
//
// The endpoints version also covers the clusters, and the routes version the
// listeners: when Envoy receives a changed cluster (listener) it asks for its
// endpoints (routes) again, and a state-of-the-world server answers only a version
// the client does not have. Without this the cluster would stay warming. The
// secrets version covers the listeners too (their filters subscribe to secrets).
//
// A version is a hash of what it covers, secrets included: a secret guessable from
// its hash must not be used (config refuses short secrets).
type Versions struct {
	Clusters, Endpoints, Listeners, Routes, Secrets string
}

// Versions hashes the deterministic wire form of each type.
func (r *Resources) Versions() (Versions, error) {
	c, e, l, rt, sc := sha256.New(), sha256.New(), sha256.New(), sha256.New(), sha256.New()
	for _, x := range r.Clusters {
		if err := write(x, c, e); err != nil {
			return Versions{}, err
		}
	}
	for _, x := range r.Endpoints {
		if err := write(x, e); err != nil {
			return Versions{}, err
		}
	}
	for _, x := range r.Listeners {
		if err := write(x, l, rt, sc); err != nil {
			return Versions{}, err
		}
	}
	for _, x := range r.Routes {
		if err := write(x, rt); err != nil {
			return Versions{}, err
		}
	}
	for _, x := range r.Secrets {
		if err := write(x, sc); err != nil {
			return Versions{}, err
		}
	}
	return Versions{Clusters: sum(c), Endpoints: sum(e), Listeners: sum(l), Routes: sum(rt), Secrets: sum(sc)}, nil
}

var deterministic = proto.MarshalOptions{Deterministic: true}

func write(m proto.Message, hs ...hash.Hash) error {
	b, err := deterministic.Marshal(m)
	if err != nil {
		return err
	}
	for _, h := range hs {
		h.Write(b)
	}
	return nil
}

func sum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil))[:16] }
