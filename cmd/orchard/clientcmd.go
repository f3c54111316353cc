package main

import (
	"os"

	"github.com/orchardci/orchard/fleet/client"
)

// newClient connects to the controller of the chosen context, with the
// ORCHARD_URL and ORCHARD_SERVICE_ACCOUNT_* overrides.
func (g *globals) newClient() (*client.Client, error) {
	env := os.Environ()
	cfg, err := client.Resolve(client.Home(env), g.context, env)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "orchard/" + version
	return client.New(cfg)
}
