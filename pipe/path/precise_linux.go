package path

import (
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// preciseThread keeps the calling goroutine on its thread and makes that
// thread's timers exact to the microsecond (its timer slack, 50 µs by
// default), for a timed crossing's sends; restore undoes both.
func preciseThread() (restore func()) {
	runtime.LockOSThread()
	old, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		return runtime.UnlockOSThread
	}
	unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(time.Microsecond), 0, 0, 0)
	return func() {
		unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(old), 0, 0, 0)
		runtime.UnlockOSThread()
	}
}

// sleepPrecise blocks the thread for d (at most a few milliseconds) in
// the kernel, without handing its P to another thread: the runtime's own
// timers wake up to a millisecond late, and a thread that gives its P up
// in a blocking call may wait for it again when it returns.
func sleepPrecise(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}
