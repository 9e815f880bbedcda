package wire

// Find, Leave and FindResp: asking to be paired with a peer, withdrawing
// the request, and the server's answer (waiting, or matched with the
// peer's addresses and the roles).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Find asks to be paired with Peer in Session, or with whoever finds Name
// (FindAnyPeer, Peer empty).
type Find struct {
	ReqID   uint64
	Cookie  []byte
	Session string
	Name    string
	Peer    string // empty exactly when Flags has FindAnyPeer
	Flags   FindFlags
	// Signature is by the session key, for registered sessions (it covers
	// Flags too); all zero otherwise.
	Signature  [64]byte
	Candidates []netip.AddrPort
}

// FindFlags are the flag bits of a Find. The decoder keeps bits it does not
// know, so that the server can refuse them with CodeBadArgument (Check).
type FindFlags uint8

const (
	// FindAnyPeer: wait for whoever finds Name (p2pcat --listen); Peer is
	// empty, and the match names the peer (FindResp.PeerName).
	FindAnyPeer FindFlags = 1 << 0
	// FindAgain: the find continues a pairing its run already made (a
	// punch attempt after the first). It pairs only with a find that names
	// the sender, never with a FindAnyPeer one.
	FindAgain FindFlags = 1 << 1

	findKnownFlags = FindAnyPeer | FindAgain
)

// Check reports what makes f a request no server should act on: unknown
// flag bits, FindAnyPeer with a Peer or with FindAgain, no Peer without
// FindAnyPeer, or Name and Peer the same. The server answers it with
// CodeBadArgument and this text.
func (f *Find) Check() error {
	switch {
	case f.Flags&^findKnownFlags != 0:
		return fmt.Errorf("unknown find flags 0x%02x", uint8(f.Flags&^findKnownFlags))
	case f.Flags&FindAnyPeer != 0 && f.Flags&FindAgain != 0:
		return errors.New("a find for any peer cannot continue a pairing (any-peer and again flags both set)")
	case f.Flags&FindAnyPeer != 0 && f.Peer != "":
		return errors.New("a find for any peer names no peer")
	case f.Flags&FindAnyPeer == 0 && f.Peer == "":
		return errors.New("no peer name (and not a find for any peer)")
	case f.Name == f.Peer:
		return errors.New("own name and peer name are the same")
	}
	return nil
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
	Peer    string // empty for a FindAnyPeer find
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
	// PeerName is the peer's name as it gave it in its Find (matched
	// only): for a FindAnyPeer find the only way to learn it.
	PeerName string
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
	b = append(b, byte(m.Flags))
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
	b = appendString(b, m.PeerName)
	b = appendAddr(b, m.PeerObserved)
	return appendAddrs(b, m.PeerCandidates)
}

func readFind(r *reader) *Find {
	v := &Find{ReqID: r.u64("request id")}
	v.Cookie = r.bytes(MaxCookieLen, "cookie")
	v.Session = r.name("session")
	v.Name = r.name("name")
	v.Peer = r.nameOrEmpty("peer")
	v.Flags = FindFlags(r.u8("flags"))
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
	v.Peer = r.nameOrEmpty("peer")
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
	v.PeerName = r.name("peer name")
	v.PeerObserved = r.addr("peer address")
	v.PeerCandidates = r.addrs("peer candidates")
}
