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

// wireForm is each resource's deterministic encoding, by type, in the order of
// Resources: hashed into the versions and sent as it is (encodedSnapshot), so
// that a change is marshalled once.
type wireForm struct {
	clusters, endpoints, listeners, routes, secrets [][]byte
}

func (r *Resources) wireForm() (*wireForm, error) {
	var w wireForm
	var err error
	if w.clusters, err = marshalAll(r.Clusters); err != nil {
		return nil, err
	}
	if w.endpoints, err = marshalAll(r.Endpoints); err != nil {
		return nil, err
	}
	if w.listeners, err = marshalAll(r.Listeners); err != nil {
		return nil, err
	}
	if w.routes, err = marshalAll(r.Routes); err != nil {
		return nil, err
	}
	if w.secrets, err = marshalAll(r.Secrets); err != nil {
		return nil, err
	}
	return &w, nil
}

var deterministic = proto.MarshalOptions{Deterministic: true}

func marshalAll[T proto.Message](items []T) ([][]byte, error) {
	out := make([][]byte, len(items))
	for i, it := range items {
		b, err := deterministic.Marshal(it)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// Versions hashes the deterministic wire form of each type.
func (r *Resources) Versions() (Versions, error) {
	w, err := r.wireForm()
	if err != nil {
		return Versions{}, err
	}
	return w.versions(), nil
}

func (w *wireForm) versions() Versions {
	c, e, l, rt, sc := sha256.New(), sha256.New(), sha256.New(), sha256.New(), sha256.New()
	write(w.clusters, c, e)
	write(w.endpoints, e)
	write(w.listeners, l, rt, sc)
	write(w.routes, rt)
	write(w.secrets, sc)
	return Versions{Clusters: sum(c), Endpoints: sum(e), Listeners: sum(l), Routes: sum(rt), Secrets: sum(sc)}
}

func write(items [][]byte, hs ...hash.Hash) {
	for _, b := range items {
		for _, h := range hs {
			h.Write(b)
		}
	}
}

func sum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil))[:16] }
