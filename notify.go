package main

import (
	"log/slog"
	"strconv"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// sdNotifier tells the service manager how serve is doing, for a systemd
// unit of Type=notify (sd_notify(3)): READY=1 once every listener accepts
// connections, RELOADING=1 and READY=1 again around a SIGHUP reload, and
// STOPPING=1 when shutting down. Ordering Postfix after the daemon then
// means after it answers, not merely after the process started.
//
// Without NOTIFY_SOCKET in the environment (not started by systemd, or by
// a unit of another type) every call does nothing.
type sdNotifier struct {
	log *slog.Logger
}

// ready says that the daemon serves: every configured listener is bound,
// so a client's connection is accepted from now on. status is a line for
// `systemctl status`.
func (n sdNotifier) ready(status string) {
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// reloading says that a reload has begun; ready must follow, whether the
// new configuration was taken or refused. MONOTONIC_USEC is what systemd
// 253 and later require with it (Type=notify-reload) to tell this reload
// from an earlier one; older versions ignore it.
func (n sdNotifier) reloading() {
	var ts unix.Timespec
	msg := daemon.SdNotifyReloading
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err == nil {
		msg += "\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
	}
	n.send(msg)
}

// stopping says that the daemon is shutting down (systemd then does not
// take the exit for a crash, nor send requests its way).
func (n sdNotifier) stopping() {
	n.send(daemon.SdNotifyStopping)
}

func (n sdNotifier) send(state string) {
	// The environment is kept (false): each later state goes to the same
	// socket.
	if _, err := daemon.SdNotify(false, state); err != nil {
		// systemd then waits for READY=1 until its start timeout and
		// fails the unit: the log says why.
		n.log.Error("cannot notify the service manager (NOTIFY_SOCKET)", "state", state, "err", err)
	}
}
