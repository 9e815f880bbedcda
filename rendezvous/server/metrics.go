package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Drop reasons, the label values of p2pcat_rendezvous_drops_total.
const (
	dropNotOurs       = "not_rendezvous" // no magic: noise, scans, stray STUN
	dropMalformed     = "malformed"
	dropVersion       = "version"
	dropUnknownType   = "unknown_type"
	dropUnexpected    = "unexpected_type" // a reply type sent to the server
	dropBadCookie     = "bad_cookie"
	dropStaleCookie   = "stale_cookie"
	dropRateLimited   = "rate_limited"
	dropAmplification = "amplification_guard" // an answer would be larger than the request
	dropTableFull     = "table_full"
	dropQueueFull     = "queue_full"
	dropPanic         = "panic"
	dropSendError     = "send_error"
	dropRelayRefused  = "relay_refused" // no such pairing, not from one of its ends, or a RelayBind without the end's MAC
	dropRelayRate     = "relay_rate"    // over the per-session rate
	dropRelayQuota    = "relay_quota"   // the per-session byte cap was reached
	dropWithdrawn     = "withdrawn"     // a re-sent find of an attempt its client withdrew (Leave)
)

var dropReasons = []string{
	dropNotOurs, dropMalformed, dropVersion, dropUnknownType, dropUnexpected,
	dropBadCookie, dropStaleCookie, dropRateLimited, dropAmplification,
	dropTableFull, dropQueueFull, dropPanic, dropSendError,
	dropRelayRefused, dropRelayRate, dropRelayQuota, dropWithdrawn,
}

// metrics holds the server's counters, resolved once so that the packet path
// does no label lookups.
type metrics struct {
	packets       map[wire.Type]prometheus.Counter
	packetsOther  prometheus.Counter
	drops         map[string]prometheus.Counter
	registrations *prometheus.CounterVec
	pairings      prometheus.Counter
	authFailures  prometheus.Counter
	expired       prometheus.Counter
	relayPackets  prometheus.Counter
	relayBytes    prometheus.Counter
	stunResults   map[string]prometheus.Counter
}

// STUN results, the label values of p2pcat_rendezvous_stun_total.
const (
	stunResultAnswered = "answered" // a Binding success from the socket asked
	stunResultChanged  = "changed"  // a success from the other socket (CHANGE-REQUEST)
	stunResultError    = "error"    // a Binding error (420)
)

func newMetrics(reg prometheus.Registerer, pendingFn, registeredFn, relayFn func() float64) *metrics {
	packets := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "p2pcat_rendezvous_packets_total",
		Help: "Rendezvous datagrams received, by message type.",
	}, []string{"type"})
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "p2pcat_rendezvous_drops_total",
		Help: "Datagrams dropped or refused, by reason.",
	}, []string{"reason"})
	stunTotal := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "p2pcat_rendezvous_stun_total",
		Help: "STUN Binding requests answered, by result (answered, changed, error); refused ones are drops.",
	}, []string{"result"})
	m := &metrics{
		stunResults: make(map[string]prometheus.Counter),
		packets:     make(map[wire.Type]prometheus.Counter),
		drops:       make(map[string]prometheus.Counter),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pcat_rendezvous_registrations_total",
			Help: "Register requests, by result (created, refreshed, taken, error).",
		}, []string{"result"}),
		pairings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pcat_rendezvous_pairings_total",
			Help: "Pairs matched.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pcat_rendezvous_auth_failures_total",
			Help: "Finds for a registered session, and registrations, whose session-key signature does not verify.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pcat_rendezvous_pending_expired_total",
			Help: "Pending finds that expired without their peer.",
		}),
		relayPackets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pcat_rendezvous_relayed_packets_total",
			Help: "Datagrams forwarded by the relay.",
		}),
		relayBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "p2pcat_rendezvous_relayed_bytes_total",
			Help: "Bytes forwarded by the relay (relay header included).",
		}),
	}
	for _, t := range []wire.Type{wire.TypeHello, wire.TypeChallenge, wire.TypeRegister, wire.TypeRegisterResp, wire.TypeFind, wire.TypeFindResp, wire.TypeError, wire.TypeRelayBind, wire.TypeLeave, wire.TypeRelayEnded} {
		m.packets[t] = packets.WithLabelValues(t.String())
	}
	m.packetsOther = packets.WithLabelValues("other")
	for _, r := range dropReasons {
		m.drops[r] = drops.WithLabelValues(r)
	}
	for _, r := range []string{stunResultAnswered, stunResultChanged, stunResultError} {
		m.stunResults[r] = stunTotal.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(packets, drops, stunTotal, m.registrations, m.pairings, m.authFailures, m.expired, m.relayPackets, m.relayBytes,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "p2pcat_rendezvous_relay_pairings",
				Help: "Pairings the relay remembers (offered or relaying).",
			}, relayFn),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "p2pcat_rendezvous_pending",
				Help: "Finds waiting for their peer.",
			}, pendingFn),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "p2pcat_rendezvous_registered_sessions",
				Help: "Registrations in the store (expired ones until the next purge).",
			}, registeredFn),
		)
	}
	return m
}

func (m *metrics) packet(t wire.Type) {
	if c, ok := m.packets[t]; ok {
		c.Inc()
		return
	}
	m.packetsOther.Inc()
}

func (m *metrics) drop(reason string) { m.drops[reason].Inc() }

func (m *metrics) stun(result string) { m.stunResults[result].Inc() }

func (m *metrics) relayed(n int) {
	m.relayPackets.Inc()
	m.relayBytes.Add(float64(n))
}
