// dashboardcheck: checks a Grafana dashboard JSON against Grafana's dashboard schema,
// as generated into the Grafana Foundation SDK (Apache-2.0): strict decoding (absent
// required fields, unknown fields and wrong types fail), panels and Prometheus queries
// decoded by their plugin types, then the SDK's Validate.
//
//	go run . ../grafana-dashboard.json
package main

import (
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboardcheck DASHBOARD.json")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var board dashboard.Dashboard
	if err := realError(board.UnmarshalJSONStrict(raw)); err != nil {
		fmt.Fprintf(os.Stderr, "%s: not a valid Grafana dashboard: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if err := realError(board.Validate()); err != nil {
		fmt.Fprintf(os.Stderr, "%s: invalid: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	fmt.Printf("%s: valid Grafana dashboard %q, %d panels\n", os.Args[1], *board.Title, len(board.Panels))
}

// realError: the SDK returns an empty cog.BuildErrors as a non-nil error when nothing
// failed; that is no error.
func realError(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}
