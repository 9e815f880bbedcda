//go:build !linux

package path

import (
	"runtime"
	"time"
)

// preciseThread keeps the calling goroutine on its thread (precise_linux.go
// also tightens its timers).
func preciseThread() (restore func()) {
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}

// sleepPrecise waits d on the clock: without a precise sleep here, the
// caller's spin does it.
func sleepPrecise(d time.Duration) {}
