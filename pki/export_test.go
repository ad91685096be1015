package pki

import "io"

// PairRequestFields is what the fuzz test checks of a parsed request.
type PairRequestFields struct {
	Site, TokenID, Address string
	ProofLen, CAPEMLen     int
}

// ReadPairRequest exposes the parser of the primary's pairing request,
// the one message of the exchange a secondary reads from an
// unauthenticated peer, to the fuzz test.
func ReadPairRequest(r io.Reader) (PairRequestFields, error) {
	req, err := readPairRequest(r)
	return PairRequestFields{req.Site, req.TokenID, req.Address, len(req.Proof), len(req.CAPEM)}, err
}
