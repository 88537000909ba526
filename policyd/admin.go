package policyd

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpHandler serves listen.http: /metrics and /healthz for monitoring,
// and the pin administration that `tlspolicyd pins` uses while the daemon
// holds the state store.
func (d *Daemon) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.gather, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelError),
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	// Pin administration for `tlspolicyd pins` while the daemon holds the
	// store. Only local clients may change what the daemon enforces.
	mux.Handle("GET /admin/pins", d.requireToken(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, PinStatuses(d.Engine.Rules(), d.pins.list()))
	})))
	mux.Handle("GET /{$}", d.requireToken(http.HandlerFunc(d.statusHandler)))
	mux.Handle("GET /d/{name}", d.requireToken(http.HandlerFunc(d.destinationHandler)))
	mux.Handle("GET /static/", d.requireToken(staticHandler()))
	mux.Handle("GET /api/v1/destinations", d.requireToken(http.HandlerFunc(d.apiDestinations)))
	mux.Handle("GET /api/v1/destinations/{name}", d.requireToken(http.HandlerFunc(d.apiDestination)))
	mux.Handle("PUT /admin/pins/{destination}", d.requireToken(localOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		p, lowered, err := d.pins.add(r.PathValue("destination"), r.URL.Query().Get("level"), force)
		var lower *PinLowerError
		switch {
		case errors.As(err, &lower):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		st := PinStatus{Pin: p, Capped: CapOfPin(d.Engine.Rules(), p)}
		// Not "level": that is the record's own (INFO), which a second
		// "level" would repeat, and in JSON replace for most readers.
		attrs := []any{"destination", p.Key, "pin_level", p.Level, "expires", p.Expires}
		if st.Capped != nil {
			attrs = append(attrs, "answered", st.Capped.Answered, "capped", st.Capped.Note)
		}
		if lowered != nil {
			// Less protection against a downgrade than the destination
			// had proved: an auditor looks for this one.
			d.log.Warn("pin lowered by administrator (force)", append(attrs, "previous_level", lowered.Level,
				"previous_source", lowered.Source)...)
		} else {
			d.log.Info("pin added by administrator", attrs...)
		}
		writeJSON(w, http.StatusOK, st)
	}))))
	mux.Handle("DELETE /admin/pins/{destination}", d.requireToken(localOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		found, err := d.pins.remove(r.PathValue("destination"))
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
		case !found:
			http.Error(w, "no pin for "+r.PathValue("destination"), http.StatusNotFound)
		default:
			d.log.Info("pin removed by administrator", "destination", r.PathValue("destination"))
			w.WriteHeader(http.StatusNoContent)
		}
	}))))
	return mux
}

// localOnly refuses requests that do not come from this machine.
func localOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		ip := net.ParseIP(host)
		if err == nil && (ip == nil || !ip.IsLoopback()) {
			http.Error(w, "pin administration is only allowed from this machine", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // policies hold ">=", JSON is not HTML
	enc.Encode(v)
}
