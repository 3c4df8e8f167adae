package spec

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestOptimizeForms(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want Optimize
	}{
		{"absent", "{}", Optimize{}},
		{"null", "{optimize: }", Optimize{}},
		{"false", "{optimize: false}", Optimize{}},
		{"true", "{optimize: true}", Optimize{Enabled: true, Strip: true, Compress: "none", Level: 9}},
		{"empty mapping", "{optimize: {}}", Optimize{Enabled: true, Strip: true, Compress: "none", Level: 9}},
		{"no strip", "{optimize: {strip: false, compress: upx}}", Optimize{Enabled: true, Compress: "upx", Level: 9}},
		{"strip only", "{optimize: {compress: none}}", Optimize{Enabled: true, Strip: true, Compress: "none", Level: 9}},
		{"best lzma", "{optimize: {level: 10, lzma: true, compress: upx}}", Optimize{Enabled: true, Strip: true, Compress: "upx", Level: 10, LZMA: true}},
		{"verify list", "{optimize: {verify: [--version]}}", Optimize{Enabled: true, Strip: true, Compress: "none", Level: 9,
			Verify: &Verify{Args: []string{"--version"}, Timeout: DefaultVerifyTimeout}}},
		{"verify mapping", "{optimize: {verify: {args: [version, -v], exit: 3, output: demo, timeout: 5s}}}",
			Optimize{Enabled: true, Strip: true, Compress: "none", Level: 9,
				Verify: &Verify{Args: []string{"version", "-v"}, Exit: 3, Output: "demo", Timeout: Duration(5 * time.Second)}}},
		{"verify without args", "{optimize: {verify: {output: usage}}}", Optimize{Enabled: true, Strip: true, Compress: "none", Level: 9,
			Verify: &Verify{Output: "usage", Timeout: DefaultVerifyTimeout}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := "name: demo\nfiles:\n  - {src: bin/demo-api, dst: /app, " + tt.yaml[1:len(tt.yaml)-1] + "}\n"
			s, err := Parse([]byte(y), "testdata/good/emu.yaml")
			if err != nil {
				t.Fatalf("Parse:\n%v", err)
			}
			if diff := cmp.Diff(tt.want, s.Files[0].Optimize); diff != "" {
				t.Errorf("Optimize (-want +got):\n%s", diff)
			}
			if err := s.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}
