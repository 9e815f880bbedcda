package server

import "time"

// Test hooks, visible only to this package's tests.

func (s *Server) SetClock(now func() time.Time) {
	h := testHooks{now: now}
	if old := s.testOnly.Load(); old != nil {
		h.panicOn = old.panicOn
	}
	s.testOnly.Store(&h)
}

func (s *Server) PanicOnSession(session string) {
	h := testHooks{panicOn: session}
	if old := s.testOnly.Load(); old != nil {
		h.now = old.now
	}
	s.testOnly.Store(&h)
}
