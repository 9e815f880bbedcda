package wire

// Find, Leave and FindResp: asking to be paired with a peer, withdrawing
// the request, and the server's answer (waiting, or matched with the
// peer's addresses and the roles).

import (
	"encoding/binary"
	"net/netip"
)

// Find asks to be paired with Peer in Session.
type Find struct {
	ReqID      uint64
	Cookie     []byte
	Session    string
	Name       string
	Peer       string
	Signature  [64]byte // by the session key, for registered sessions; all zero otherwise
	Candidates []netip.AddrPort
}

// Leave withdraws a Find that is still waiting for its peer (the client
// was interrupted or gave up), so that the peer, arriving later, is not
// paired with a client that has gone. ReqID is the Find's. The server
// sends no answer.
type Leave struct {
	ReqID   uint64
	Cookie  []byte
	Session string
	Name    string
	Peer    string
}

// FindStatus tells whether the peer has shown up yet.
type FindStatus uint8

const (
	FindWaiting FindStatus = 0
	FindMatched FindStatus = 1
)

// PairingRole names the two ends of a pairing: the first arrival is the
// initiator end, the other the responder end. The relay binds each end by
// it (RelayBind). It is not the peers' handshake role, which both derive
// from their names (secure.RoleFor), so that a server cannot choose it.
type PairingRole uint8

const (
	RoleInitiator PairingRole = 0
	RoleResponder PairingRole = 1
)

func (r PairingRole) String() string {
	if r == RoleInitiator {
		return "initiator"
	}
	return "responder"
}

// findRespRelay is the FindResp flag that offers the relay.
const findRespRelay = 1 << 0

// FindResp answers Find: still waiting, or matched with the peer's addresses.
type FindResp struct {
	ReqID     uint64
	Status    FindStatus
	Observed  netip.AddrPort // the requester's address as the server saw it
	PairingID [16]byte
	Role      PairingRole
	Relay     bool // the server relays datagrams for this pairing
	// RelayToken is this recipient's secret for its end of the relay
	// (RelayBind, RelayEnded); each end gets its own. Encoded only when
	// Relay is set, and zero otherwise.
	RelayToken     [16]byte
	PeerObserved   netip.AddrPort
	PeerCandidates []netip.AddrPort
}

func (*Find) Type() Type     { return TypeFind }
func (*FindResp) Type() Type { return TypeFindResp }
func (*Leave) Type() Type    { return TypeLeave }

func (m *Find) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeFind)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = appendString(b, m.Session)
	b = appendString(b, m.Name)
	b = appendString(b, m.Peer)
	b = append(b, m.Signature[:]...)
	return appendAddrs(b, m.Candidates)
}

func (m *Leave) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeLeave)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = appendString(b, m.Session)
	b = appendString(b, m.Name)
	return appendString(b, m.Peer)
}

func (m *FindResp) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeFindResp)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = append(b, byte(m.Status))
	b = appendAddr(b, m.Observed)
	if m.Status != FindMatched {
		return b
	}
	b = append(b, m.PairingID[:]...)
	b = append(b, byte(m.Role))
	var flags byte
	if m.Relay {
		flags |= findRespRelay
	}
	b = append(b, flags)
	if m.Relay {
		b = append(b, m.RelayToken[:]...)
	}
	b = appendAddr(b, m.PeerObserved)
	return appendAddrs(b, m.PeerCandidates)
}

func readFind(r *reader) *Find {
	v := &Find{ReqID: r.u64("request id")}
	v.Cookie = r.bytes(MaxCookieLen, "cookie")
	v.Session = r.name("session")
	v.Name = r.name("name")
	v.Peer = r.name("peer")
	r.array(v.Signature[:], "signature")
	v.Candidates = r.addrs("candidates")
	r.padding()
	return v
}

func readLeave(r *reader) *Leave {
	v := &Leave{ReqID: r.u64("request id")}
	v.Cookie = r.bytes(MaxCookieLen, "cookie")
	v.Session = r.name("session")
	v.Name = r.name("name")
	v.Peer = r.name("peer")
	r.padding()
	return v
}

func readFindResp(r *reader) *FindResp {
	v := &FindResp{ReqID: r.u64("request id")}
	v.Status = FindStatus(r.u8("status"))
	v.Observed = r.addr("observed address")
	switch v.Status {
	case FindWaiting:
	case FindMatched:
		readMatch(r, v)
	default:
		r.fail("find status")
	}
	r.end()
	return v
}

// readMatch reads the rest of a matched FindResp: the pairing, the relay
// offer and the peer's addresses.
func readMatch(r *reader, v *FindResp) {
	r.array(v.PairingID[:], "pairing id")
	v.Role = PairingRole(r.u8("role"))
	if v.Role > RoleResponder {
		r.fail("role")
	}
	flags := r.u8("flags")
	if flags&^findRespRelay != 0 {
		r.fail("flags")
	}
	v.Relay = flags&findRespRelay != 0
	if v.Relay {
		r.array(v.RelayToken[:], "relay token")
	}
	v.PeerObserved = r.addr("peer address")
	v.PeerCandidates = r.addrs("peer candidates")
}
