package progress

import (
	"testing"
	"time"
)

func TestHumanize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{999, "999 B"},
		{1000, "1.0 kB"},
		{123456, "123.5 kB"},
		{348_200_000, "348.2 MB"},
		{999_960, "1.0 MB"},
		{3_400_000_000, "3.4 GB"},
		{-2048, "-2.0 kB"},
	}
	for _, tt := range tests {
		if got := Humanize(tt.in); got != tt.want {
			t.Errorf("Humanize(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestDur(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "0.0s"},
		{-time.Second, "0.0s"},
		{40 * time.Millisecond, "0.0s"},
		{350 * time.Millisecond, "0.4s"},
		{12300 * time.Millisecond, "12.3s"},
		{59960 * time.Millisecond, "1m00s"},
		{65 * time.Second, "1m05s"},
		{2*time.Hour + 3*time.Minute + 10*time.Second, "2h03m10s"},
	}
	for _, tt := range tests {
		if got := Dur(tt.in); got != tt.want {
			t.Errorf("Dur(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestClean(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"line\r\n", "line"},
		{"10%\r50%\r100%", "100%"},
		{"\x1b[31mred\x1b[0m", "red"},
		{"a\tb\x07", "a    b"},
	}
	for _, tt := range tests {
		if got := clean(tt.in); got != tt.want {
			t.Errorf("clean(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
