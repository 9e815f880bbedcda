package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The lab with delay. The kernel here has no sch_netem, and a relay of
// datagrams (internal/netem) would rewrite the addresses that the NATs must
// see, so a delayed lab is built with "tap" (scripts/natlab.sh): each
// client's link to the internet is a pair of TAP devices, and this process
// copies the Ethernet frames between the two ends, each frame after a
// fixed delay. The frames are the real ones, so the routers' conntrack and
// filters see the real flows, and packets cross in flight as on the
// internet.
//
// A packet between the two clients crosses both clients' links, so each
// link delays by half the lab's delay: the delay between the peers is the
// one asked for, and a client's to the server half of it.

// tapEnd names one TAP device: the namespace it is in and its name there.
type tapEnd struct{ ns, name string }

// delayedLinks lists the TAP pairs of a lab built with "tap" whose clients
// are behind typeA and typeB: each client's (or its router's) end, and the
// internet bridge's.
func delayedLinks(prefix, typeA, typeB string) [][2]tapEnd {
	inet := prefix + "-inet"
	if typeA == "samelan" {
		return [][2]tapEnd{{{prefix + "-r", "wan"}, {inet, "port_r"}}}
	}
	var links [][2]tapEnd
	for side, typ := range map[string]string{"a": typeA, "b": typeB} {
		if typ == "public" {
			links = append(links, [2]tapEnd{{prefix + "-" + side, "eth0"}, {inet, "port_" + side}})
		} else {
			links = append(links, [2]tapEnd{{prefix + "-r" + side, "wan"}, {inet, "port_r" + side}})
		}
	}
	return links
}

// startDelayedLinks attaches to both ends of each link and copies frames
// between them both ways, each delay/2 after it arrived. The copying stops
// when the test ends (before the lab is removed).
func startDelayedLinks(t *testing.T, links [][2]tapEnd, delay time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	var files []*os.File
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
		wg.Wait()
	})
	for _, l := range links {
		x, err := openTap(l[0])
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, x)
		y, err := openTap(l[1])
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, y)
		wg.Go(func() { delayFrames(y, x, delay/2) })
		wg.Go(func() { delayFrames(x, y, delay/2) })
	}
}

// inNetns runs f on a thread moved into network namespace ns and returns
// what it returns. Sockets and devices f opens stay in ns when used from
// other threads. The thread is never unlocked, so it ends with its
// goroutine instead of going back to the pool in the wrong namespace.
func inNetns[T any](ns string, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		nsf, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			r.err = err
		} else if err = unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("setns %s: %w", ns, err)
		} else {
			r.v, r.err = f()
		}
		if nsf != nil {
			nsf.Close()
		}
		done <- r
	}()
	r := <-done
	return r.v, r.err
}

// openTap attaches to TAP device e. The device is looked up in the network
// namespace that opens /dev/net/tun, so the open runs in e.ns.
func openTap(e tapEnd) (*os.File, error) {
	f, err := inNetns(e.ns, func() (*os.File, error) { return openTapHere(e) })
	if err != nil {
		return nil, fmt.Errorf("attach to TAP %s in %s: %w", e.name, e.ns, err)
	}
	return f, nil
}

// openTapHere attaches to device e.name of the calling thread's network
// namespace.
func openTapHere(e tapEnd) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(e.name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	// Non-blocking, so reads go through the runtime's poller and Close
	// ends them.
	return os.NewFile(uintptr(fd), e.ns+"/"+e.name), nil
}

// delayQueue bounds the frames in flight on one direction of a link: a
// full queue drops, as a router's does.
const delayQueue = 4096

// delayFrames copies each frame read from src to dst d after it arrived,
// in order, until src is closed.
func delayFrames(dst, src *os.File, d time.Duration) {
	type frame struct {
		due time.Time
		b   []byte
	}
	q := make(chan frame, delayQueue)
	go func() {
		defer close(q)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return // closed: the test has ended
			}
			select {
			case q <- frame{time.Now().Add(d), slices.Clone(buf[:n])}:
			default: // the queue is full: the frame is lost
			}
		}
	}()
	for f := range q {
		time.Sleep(time.Until(f.due))
		dst.Write(f.b) // a frame the device refuses is lost, as on a wire
	}
}
