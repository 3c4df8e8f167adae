package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/examples/demo/internal/store"
)

type fakePinger struct{ err error }

func (p fakePinger) Ping(context.Context) error { return p.err }

type fakeStore struct {
	pingErr   error
	items     []store.Item
	listErr   error
	createErr error
	created   []string
}

func (s *fakeStore) Ping(context.Context) error { return s.pingErr }

func (s *fakeStore) ListItems(context.Context) ([]store.Item, error) { return s.items, s.listErr }

func (s *fakeStore) CreateItem(_ context.Context, name string) (store.Item, error) {
	if s.createErr != nil {
		return store.Item{}, s.createErr
	}
	s.created = append(s.created, name)
	it := store.Item{ID: int64(len(s.items) + 1), Name: name, CreatedAt: time.Unix(0, 0).UTC()}
	s.items = append(s.items, it)
	return it, nil
}

func do(t *testing.T, h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHealth(t *testing.T) {
	tests := []struct {
		name       string
		pgErr      error
		valkeyErr  error
		wantCode   int
		wantFailed []string
	}{
		{name: "both up", wantCode: http.StatusOK},
		{name: "postgres down", pgErr: errors.New("postgres ping: refused"),
			wantCode: http.StatusServiceUnavailable, wantFailed: []string{"postgres"}},
		{name: "valkey down", valkeyErr: errors.New("valkey ping: refused"),
			wantCode: http.StatusServiceUnavailable, wantFailed: []string{"valkey"}},
		{name: "both down", pgErr: errors.New("pg"), valkeyErr: errors.New("vk"),
			wantCode: http.StatusServiceUnavailable, wantFailed: []string{"postgres", "valkey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := New(&fakeStore{pingErr: tt.pgErr}, fakePinger{err: tt.valkeyErr}, nil)
			rec := do(t, h, http.MethodGet, "/health", "")
			if rec.Code != tt.wantCode {
				t.Fatalf("code = %d, want %d; body %s", rec.Code, tt.wantCode, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var body healthBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if strings.Join(body.Failed, ",") != strings.Join(tt.wantFailed, ",") {
				t.Errorf("failed = %v, want %v", body.Failed, tt.wantFailed)
			}
			wantStatus := "ok"
			if tt.wantFailed != nil {
				wantStatus = "unavailable"
			}
			if body.Status != wantStatus {
				t.Errorf("status = %q, want %q", body.Status, wantStatus)
			}
			if tt.pgErr != nil && body.Postgres != tt.pgErr.Error() {
				t.Errorf("postgres = %q, want the error %q", body.Postgres, tt.pgErr)
			}
			if tt.valkeyErr == nil && body.Valkey != "ok" {
				t.Errorf("valkey = %q, want ok", body.Valkey)
			}
		})
	}
}

func TestHealthTimesOut(t *testing.T) {
	// A check that hangs must end by its context, not hang the request.
	h := New(&fakeStore{}, blockingPinger{}, nil)
	req := httptest.NewRequest(http.MethodGet, "/health", nil)
	ctx, cancel := context.WithTimeout(req.Context(), 50*time.Millisecond)
	defer cancel()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req.WithContext(ctx))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("code = %d, want 503", rec.Code)
	}
}

type blockingPinger struct{}

func (blockingPinger) Ping(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestListItems(t *testing.T) {
	tests := []struct {
		name     string
		st       *fakeStore
		wantCode int
		wantBody string
	}{
		{name: "empty is []", st: &fakeStore{}, wantCode: http.StatusOK, wantBody: "[]\n"},
		{name: "items in store order", st: &fakeStore{items: []store.Item{
			{ID: 1, Name: "a", CreatedAt: time.Unix(0, 0).UTC()},
			{ID: 2, Name: "b", CreatedAt: time.Unix(0, 0).UTC()},
		}}, wantCode: http.StatusOK,
			wantBody: `[{"id":1,"name":"a","created_at":"1970-01-01T00:00:00Z"},` +
				`{"id":2,"name":"b","created_at":"1970-01-01T00:00:00Z"}]` + "\n"},
		{name: "store error", st: &fakeStore{listErr: errors.New("boom")},
			wantCode: http.StatusInternalServerError, wantBody: `{"error":"internal error"}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, New(tt.st, fakePinger{}, nil), http.MethodGet, "/items", "")
			if rec.Code != tt.wantCode || rec.Body.String() != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", rec.Code, rec.Body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestCreateItem(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		createErr error
		wantCode  int
		wantName  string // stored name, when created
		wantError string // substring of the error message
	}{
		{name: "ok", body: `{"name":"pear"}`, wantCode: http.StatusCreated, wantName: "pear"},
		{name: "name is trimmed", body: `{"name":"  pear "}`, wantCode: http.StatusCreated, wantName: "pear"},
		{name: "empty name", body: `{"name":""}`, wantCode: http.StatusBadRequest, wantError: "must not be empty"},
		{name: "blank name", body: `{"name":"   "}`, wantCode: http.StatusBadRequest, wantError: "must not be empty"},
		{name: "missing name", body: `{}`, wantCode: http.StatusBadRequest, wantError: "must not be empty"},
		{name: "long name", body: `{"name":"` + strings.Repeat("x", MaxNameLen+1) + `"}`,
			wantCode: http.StatusBadRequest, wantError: "longer than"},
		{name: "bad json", body: `{"name":`, wantCode: http.StatusBadRequest, wantError: "invalid JSON"},
		{name: "not an object", body: `["pear"]`, wantCode: http.StatusBadRequest, wantError: "invalid JSON"},
		{name: "wrong type", body: `{"name":3}`, wantCode: http.StatusBadRequest, wantError: "invalid JSON"},
		{name: "unknown field", body: `{"name":"a","x":1}`, wantCode: http.StatusBadRequest, wantError: "unknown field"},
		{name: "trailing value", body: `{"name":"a"}{}`, wantCode: http.StatusBadRequest, wantError: "more than one"},
		{name: "empty body", body: ``, wantCode: http.StatusBadRequest, wantError: "invalid JSON"},
		{name: "duplicate", body: `{"name":"a"}`, createErr: store.ErrDuplicate,
			wantCode: http.StatusConflict, wantError: "already exists"},
		{name: "store error", body: `{"name":"a"}`, createErr: errors.New("boom"),
			wantCode: http.StatusInternalServerError, wantError: "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &fakeStore{createErr: tt.createErr}
			rec := do(t, New(st, fakePinger{}, nil), http.MethodPost, "/items", tt.body)
			if rec.Code != tt.wantCode {
				t.Fatalf("code = %d, want %d; body %s", rec.Code, tt.wantCode, rec.Body)
			}
			if tt.wantError != "" {
				var e struct{ Error string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, tt.wantError) {
					t.Errorf("body %s: want error containing %q", rec.Body, tt.wantError)
				}
				if len(st.created) != 0 {
					t.Errorf("created %v on a rejected request", st.created)
				}
				return
			}
			var it store.Item
			if err := json.Unmarshal(rec.Body.Bytes(), &it); err != nil {
				t.Fatalf("body %s: %v", rec.Body, err)
			}
			if it.Name != tt.wantName || it.ID == 0 {
				t.Errorf("item = %+v, want name %q and an id", it, tt.wantName)
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	rec := do(t, New(&fakeStore{}, fakePinger{}, nil), http.MethodDelete, "/items", "")
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /items = %d, want 405", rec.Code)
	}
}
