// Package api is the demo's HTTP API: health, and listing and creating items.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emu-dev/emu/examples/demo/internal/store"
)

// Store is what the handlers need from the database.
type Store interface {
	Ping(ctx context.Context) error
	ListItems(ctx context.Context) ([]store.Item, error)
	CreateItem(ctx context.Context, name string) (store.Item, error)
}

// Pinger checks that a dependency answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// MaxNameLen is the longest item name POST /items accepts, in characters.
const MaxNameLen = 200

// HealthTimeout bounds each dependency check of GET /health.
const HealthTimeout = 2 * time.Second

// Handler serves the API.
type Handler struct {
	store  Store
	valkey Pinger
	log    *slog.Logger
	mux    *http.ServeMux
}

// New returns the API handler. log may be nil.
func New(st Store, valkey Pinger, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{store: st, valkey: valkey, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /health", h.health)
	h.mux.HandleFunc("GET /items", h.listItems)
	h.mux.HandleFunc("POST /items", h.createItem)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// healthBody is the JSON body of GET /health: "ok" or the error per check.
type healthBody struct {
	Status   string   `json:"status"`
	Postgres string   `json:"postgres"`
	Valkey   string   `json:"valkey"`
	Failed   []string `json:"failed,omitempty"`
}

func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	check := func(p Pinger) error {
		ctx, cancel := context.WithTimeout(r.Context(), HealthTimeout)
		defer cancel()
		return p.Ping(ctx)
	}
	pgc := make(chan error, 1)
	go func() { pgc <- check(h.store) }()
	vErr := check(h.valkey)
	pgErr := <-pgc

	body := healthBody{Status: "ok", Postgres: "ok", Valkey: "ok"}
	if pgErr != nil {
		body.Postgres = pgErr.Error()
		body.Failed = append(body.Failed, "postgres")
	}
	if vErr != nil {
		body.Valkey = vErr.Error()
		body.Failed = append(body.Failed, "valkey")
	}
	code := http.StatusOK
	if len(body.Failed) > 0 {
		body.Status = "unavailable"
		code = http.StatusServiceUnavailable
		h.log.Warn("unhealthy", "failed", body.Failed, "postgres", body.Postgres, "valkey", body.Valkey)
	}
	writeJSON(w, code, body)
}

func (h *Handler) listItems(w http.ResponseWriter, r *http.Request) {
	items, err := h.store.ListItems(r.Context())
	if err != nil {
		h.internalError(w, err)
		return
	}
	if items == nil {
		items = []store.Item{} // an empty list is [], not null
	}
	writeJSON(w, http.StatusOK, items)
}

type createRequest struct {
	Name string `json:"name"`
}

func (h *Handler) createItem(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "invalid JSON body: more than one value")
		return
	}
	name := strings.TrimSpace(req.Name)
	switch {
	case name == "":
		writeError(w, http.StatusBadRequest, `"name" must not be empty`)
		return
	case utf8.RuneCountInString(name) > MaxNameLen:
		writeError(w, http.StatusBadRequest, fmt.Sprintf(`"name" is longer than %d characters`, MaxNameLen))
		return
	}
	it, err := h.store.CreateItem(r.Context(), name)
	if errors.Is(err, store.ErrDuplicate) {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	if err != nil {
		h.internalError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, it)
}

func (h *Handler) internalError(w http.ResponseWriter, err error) {
	h.log.Error("request", "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
